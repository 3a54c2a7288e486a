//! Events and incidents, as far as the role may see them: lists, an incident with its entries, adding to it, its record as CSV.
use super::*;

impl Desk {
    /// Events, scoped by role: the DSL sees the DSL's, a technician everything else, the
    /// network manager all.
    pub async fn events(&self, mut q: EventQuery) -> DeskResult<EventPage> {
        match (
            self.may(Permission::ViewTechnicalEvents),
            self.may(Permission::Safeguarding),
        ) {
            (true, true) => {}
            (true, false) => {
                if q.audience.as_deref() == Some(DSL) {
                    return Err(DeskError::Forbidden(self.actor.role.label()));
                }
                q.exclude_audience = Some(DSL.into());
            }
            (false, true) => {
                q.audience = Some(DSL.into());
                q.exclude_audience = None;
            }
            (false, false) => return Err(DeskError::Forbidden(self.actor.role.label())),
        }
        self.with_store(move |s| s.events(&q))
            .await
            .map_err(|e| match e {
                // The asker's mistake, not the store's: a 400 that says so.
                DeskError::Store(StoreError::BadCursor(m)) => DeskError::Invalid(m),
                e => e,
            })
    }

    /// Incidents this person may see.
    pub async fn incidents(
        &self,
        mut q: IncidentQuery,
    ) -> DeskResult<(Vec<Incident>, Option<u64>)> {
        let categories = self.categories();
        if categories.is_empty() {
            return Err(DeskError::Forbidden(self.actor.role.label()));
        }
        match q.category {
            Some(c) if !categories.contains(&c) => {
                return Err(DeskError::Forbidden(self.actor.role.label()));
            }
            Some(_) => {}
            None if categories.len() == 1 => q.category = Some(categories[0]),
            None => {}
        }
        self.with_store(move |s| s.incidents(&q)).await
    }

    fn may_see(&self, i: &Incident) -> bool {
        self.categories().contains(&i.category)
    }

    /// One incident and its record; the view is audited.
    pub async fn incident(&self, id: u64) -> DeskResult<(Incident, Vec<IncidentEntry>)> {
        if self.categories().is_empty() {
            return Err(DeskError::Forbidden(self.actor.role.label()));
        }
        let (inc, entries) = self
            .with_store(move |s| Ok((s.incident(id)?, s.incident_entries(id)?)))
            .await?;
        let inc = inc.ok_or_else(|| DeskError::NotFound(format!("There is no incident {id}.")))?;
        if !self.may_see(&inc) {
            return Err(DeskError::Forbidden(self.actor.role.label()));
        }
        self.audit(
            "incident_viewed",
            &format!("incident {id}"),
            inc.category.as_str(),
        );
        Ok((inc, entries))
    }

    /// Adds an entry to an incident's record. Entries are never edited: a correction is a new
    /// note.
    pub async fn add_incident_entry(
        &self,
        id: u64,
        action: &str,
        text: &str,
    ) -> DeskResult<IncidentEntry> {
        let action = EntryAction::parse(action)
            .ok_or_else(|| DeskError::Invalid(format!("{action:?} is not an action")))?;
        let text = text.trim().to_string();
        if matches!(action, EntryAction::Note | EntryAction::ActionTaken) && text.is_empty() {
            return Err(DeskError::Invalid(
                "Write what was noted or done; an empty entry says nothing.".into(),
            ));
        }
        if text.len() > 10_000 {
            return Err(DeskError::Invalid(
                "An entry is at most 10,000 characters; split a longer account over several."
                    .into(),
            ));
        }
        let inc = self
            .with_store(move |s| s.incident(id))
            .await?
            .ok_or_else(|| DeskError::NotFound(format!("There is no incident {id}.")))?;
        if !self.may_see(&inc) {
            return Err(DeskError::Forbidden(self.actor.role.label()));
        }
        let by = self.actor.name.clone();
        let entry = self
            .with_store(move |s| s.add_incident_entry(id, Utc::now(), &by, action, &text))
            .await?;
        self.audit(
            "incident_recorded",
            &format!("incident {id}"),
            action.as_str(),
        );
        Ok(entry)
    }

    /// An incident's record as CSV for the school's safeguarding system; audited.
    pub async fn incident_csv(&self, id: u64, tz: chrono_tz::Tz) -> DeskResult<String> {
        let (inc, entries) = self.incident(id).await?;
        let hostname = self
            .c
            .device_cache()
            .get(&inc.device_id)
            .map(|d| d.hostname)
            .unwrap_or_default();
        self.audit("incident_exported", &format!("incident {id}"), "csv");
        Ok(crate::timefmt::incident_csv(&inc, &hostname, &entries, tz))
    }
}
