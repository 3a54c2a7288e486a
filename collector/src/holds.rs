//! Legal holds as people use them: the DSL places and releases them with a reason, each audited (`hold_placed`, `hold_released`, the hold's key as target); the network manager sees them.
//!
//! What a hold keeps is the store's rule (`store::privacy::Held`): nothing about the held
//! incident, device or user expires or is pseudonymised until the hold is released.

use chrono::Utc;

use crate::accounts;
use crate::auth::Permission;
use crate::desk::{Desk, DeskError, DeskResult};
use crate::store::{Category, Hold, HoldTarget};

/// The longest reason kept (a case reference and a sentence, not a case file).
pub const MAX_REASON: usize = 500;

/// Why a reason or target was refused, in words for the person.
fn invalid(m: impl Into<String>) -> DeskError {
    DeskError::Invalid(m.into())
}

/// A reason as it is stored: trimmed, required, one paragraph at most.
pub fn clean_reason(reason: &str) -> DeskResult<String> {
    let r = reason.trim();
    if r.is_empty() {
        return Err(invalid(
            "Say why (a case reference): a hold is never without its purpose.",
        ));
    }
    if r.chars().count() > MAX_REASON {
        return Err(invalid(format!(
            "The reason is longer than {MAX_REASON} characters; give a case reference."
        )));
    }
    if r.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid("The reason holds control characters."));
    }
    Ok(r.to_string())
}

/// Parses `incident:12`, `device:<id>` or `user:<name>`.
pub fn parse_target(target: &str) -> DeskResult<HoldTarget> {
    let t = HoldTarget::parse(target.trim()).ok_or_else(|| {
        invalid(format!(
            "{target:?} is not something a hold can be on: write incident:12, device:<id> or \
             user:<name>."
        ))
    })?;
    if let HoldTarget::User(u) = &t
        && (u.len() > crate::service::MAX_USER || u.chars().any(char::is_control))
    {
        return Err(invalid("That is not a username a laptop could report."));
    }
    Ok(t)
}

/// A hold's target for the log: a user's hold says only that it is a user's (the audit log,
/// which the network manager reads, has the name).
fn logged(t: &HoldTarget) -> String {
    match t {
        HoldTarget::User(_) => "user".into(),
        other => other.key(),
    }
}

impl Desk {
    /// The holds in force, newest first.
    pub async fn holds(&self) -> DeskResult<Vec<Hold>> {
        self.require(Permission::ViewHolds)?;
        let mut h = self.with_store(|s| s.holds()).await?;
        h.sort_by_key(|h| std::cmp::Reverse(h.at));
        Ok(h)
    }

    /// The hold on `target`, if any, for a page that shows whether it is held; `None` also for
    /// someone who may not see holds.
    pub async fn hold_on(&self, target: &HoldTarget) -> DeskResult<Option<Hold>> {
        if !self.may(Permission::ViewHolds) {
            return Ok(None);
        }
        let target = target.clone();
        Ok(self
            .with_store(move |s| s.holds())
            .await?
            .into_iter()
            .find(|h| h.target == target))
    }

    /// Checks that the asker may see what `t` names (a hold must not reveal that an incident
    /// or device they cannot open exists).
    async fn check_target(&self, t: &HoldTarget) -> DeskResult<()> {
        match t {
            HoldTarget::Incident(id) => {
                let id = *id;
                let inc = self
                    .with_store(move |s| s.incident(id))
                    .await?
                    .ok_or_else(|| DeskError::NotFound(format!("There is no incident {id}.")))?;
                let visible = match inc.category {
                    Category::Safeguarding => self.may(Permission::Safeguarding),
                    Category::Technical => self.may(Permission::TechnicalIncidents),
                };
                if !visible {
                    return Err(DeskError::NotFound(format!("There is no incident {id}.")));
                }
            }
            HoldTarget::Device(d) => {
                self.device(d).await?;
            }
            // A pupil may be held before their laptop reports anything more.
            HoldTarget::User(_) => {}
        }
        Ok(())
    }

    /// Places a hold (placing one again replaces its reason); audited as `hold_placed`.
    pub async fn place_hold(&self, target: &str, reason: &str) -> DeskResult<Hold> {
        self.require(Permission::ManageHolds)?;
        let target = parse_target(target)?;
        let reason = clean_reason(reason)?;
        self.check_target(&target).await?;
        let hold = Hold {
            target,
            by: self.actor.name.clone(),
            at: Utc::now(),
            reason,
        };
        let (h, actor) = (hold.clone(), self.actor.clone());
        self.with_store(move |s| {
            s.put_hold(&h)?;
            accounts::audit(s, &actor, "hold_placed", &h.target.key(), &h.reason);
            Ok(())
        })
        .await?;
        tracing::info!(target = %logged(&hold.target), "Legal hold placed");
        Ok(hold)
    }

    /// Releases a hold, saying why; audited as `hold_released`. What it kept may then expire
    /// at the next purge.
    pub async fn release_hold(&self, target: &str, reason: &str) -> DeskResult<()> {
        self.require(Permission::ManageHolds)?;
        let target = parse_target(target)?;
        let reason = clean_reason(reason)?;
        let actor = self.actor.clone();
        let key = target.key();
        let released = self
            .with_store(move |s| {
                let released = s.release_hold(&target)?;
                if released {
                    accounts::audit(s, &actor, "hold_released", &target.key(), &reason);
                }
                Ok(released)
            })
            .await?;
        if !released {
            return Err(DeskError::NotFound(format!("There is no hold on {key}.")));
        }
        tracing::info!(target = %logged(&parse_target(&key)?), "Legal hold released");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_required_and_bounded() {
        assert!(clean_reason("  ").is_err());
        assert_eq!(clean_reason(" CP-2026-14 \n").unwrap(), "CP-2026-14");
        assert!(clean_reason(&"x".repeat(MAX_REASON + 1)).is_err());
        assert!(clean_reason("a\u{7}b").is_err());
    }

    #[test]
    fn targets_parse_or_say_what_they_should_be() {
        assert_eq!(
            parse_target("incident:12").unwrap(),
            HoldTarget::Incident(12)
        );
        assert_eq!(
            parse_target("user:alice").unwrap(),
            HoldTarget::User("alice".into())
        );
        let e = parse_target("room:1").unwrap_err().to_string();
        assert!(e.contains("incident:12"), "{e}");
        assert!(parse_target("user:a\u{0}b").is_err());
    }
}
