//! The dashboard's side of subject access: the desk methods the subject pages and API call, each checking the role before anything is read.

use chrono_tz::Tz;
use serde::Serialize;

use super::{ErasureReport, ExportFiles, RecordCounts, SubjectError};
use crate::auth::Permission;
use crate::desk::{Desk, DeskError, DeskResult};
use crate::service::blocking;

/// What the subject page shows before a download or an erasure: counts, never the records.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectSummary {
    pub user: String,
    /// Records about them: naming them, or their pseudonym.
    pub counts: RecordCounts,
    /// Of those, how many name them (what an erasure would change, holds aside).
    pub named: u64,
    /// The person's dashboard role, when they are staff.
    pub account: Option<String>,
}

impl From<SubjectError> for DeskError {
    fn from(e: SubjectError) -> Self {
        match e {
            SubjectError::Store(e) => DeskError::Store(e),
            e => DeskError::Invalid(e.to_string()),
        }
    }
}

impl Desk {
    /// How many records are about `user` (network manager and DSL).
    pub async fn subject_summary(&self, user: &str) -> DeskResult<SubjectSummary> {
        self.require(Permission::SubjectAccess)?;
        super::check_name(user)?;
        let u = user.to_string();
        let c = self.c.clone();
        let (records, named, account) = blocking(move || {
            let mut records = c.store.subject_records(&u)?;
            let named = RecordCounts::of(&records).total();
            let p = super::pseudonym(c.pseudonym_key(), &u);
            super::merge(&mut records, c.store.subject_records(&p)?);
            Ok((records, named, c.store.user(&u)?.map(|a| a.role)))
        })
        .await?;
        Ok(SubjectSummary {
            user: user.to_string(),
            counts: RecordCounts::of(&records),
            named,
            account,
        })
    }

    /// Every record naming `user` as JSON and HTML (network manager and DSL); audited.
    pub async fn subject_export(&self, user: &str, tz: Tz) -> DeskResult<ExportFiles> {
        self.require(Permission::SubjectAccess)?;
        let c = self.c.clone();
        let actor = self.actor.clone();
        let user = user.to_string();
        let files = blocking(move || {
            Ok(super::export_now(
                c.store.as_ref(),
                c.pseudonym_key(),
                &actor,
                &user,
                tz,
            ))
        })
        .await??;
        Ok(files)
    }

    /// Replaces `user` by their pseudonym (network manager only); `confirm` must repeat the
    /// name, and a staff account needs `staff`. Audited.
    pub async fn subject_erase(
        &self,
        user: &str,
        confirm: &str,
        staff: bool,
        tz: Tz,
    ) -> DeskResult<ErasureReport> {
        self.require(Permission::EraseSubject)?;
        if confirm != user {
            return Err(DeskError::Invalid(
                "To erase, type the login name exactly as shown in the confirmation box.".into(),
            ));
        }
        let c = self.c.clone();
        let actor = self.actor.clone();
        let user = user.to_string();
        Ok(blocking(move || {
            let r = super::erase(
                c.store.as_ref(),
                c.pseudonym_key(),
                &actor,
                &user,
                staff,
                tz,
            );
            if r.is_ok() {
                super::reload_after_erasure(&c);
            }
            Ok(r)
        })
        .await??)
    }
}
