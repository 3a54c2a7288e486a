//! The store contract for what is not events: enrolment tokens, policy versions, derived states, accounts, sessions, API tokens, the audit log and settings.

use chrono::{Duration, Utc};
use serde_json::json;

use super::super::{
    ApiTokenRecord, AuditEntry, PolicyVersion, SessionRecord, Store, StoreError, TokenRecord,
    TokenRefusal, UserRecord,
};

fn token(hash: &str, max_uses: u32, expires_in: Duration) -> TokenRecord {
    let now = Utc::now();
    TokenRecord {
        hash: hash.into(),
        label: format!("label {hash}"),
        max_uses,
        uses: 0,
        created_at: now,
        expires_at: now + expires_in,
    }
}

pub fn tokens_obey_uses_and_expiry(s: &dyn Store) {
    let now = Utc::now();
    s.insert_token(&token("h", 2, Duration::hours(1))).unwrap();
    assert_eq!(s.use_token("h", now).unwrap().unwrap().uses, 1);
    assert_eq!(s.use_token("h", now).unwrap().unwrap().uses, 2);
    assert_eq!(s.use_token("h", now).unwrap(), Err(TokenRefusal::UsedUp));
    assert_eq!(
        s.use_token("nope", now).unwrap(),
        Err(TokenRefusal::Unknown)
    );
    let mut old = token("old", 5, Duration::zero());
    old.created_at = now - Duration::hours(1);
    old.expires_at = now;
    s.insert_token(&old).unwrap();
    assert_eq!(s.use_token("old", now).unwrap(), Err(TokenRefusal::Expired));
    let listed: Vec<(String, u32)> = s
        .enrolment_tokens()
        .unwrap()
        .into_iter()
        .map(|t| (t.hash, t.uses))
        .collect();
    assert_eq!(
        listed,
        [("h".to_string(), 2), ("old".to_string(), 0)],
        "newest first, with their uses"
    );
}

pub fn policy_versions_count_up_and_page_newest_first(s: &dyn Store) {
    assert_eq!(s.current_policy().unwrap(), None);
    for i in 1..=5 {
        let v = s
            .put_policy(json!({"description": i}), &format!("by {i}"), Utc::now())
            .unwrap();
        assert_eq!(v.version, i);
    }
    let current = s.current_policy().unwrap().unwrap();
    assert_eq!(
        (current.version, current.policy["description"].as_u64()),
        (5, Some(5))
    );
    assert_eq!(current.changed_by, "by 5");
    let versions = |p: &[PolicyVersion]| p.iter().map(|v| v.version).collect::<Vec<_>>();
    assert_eq!(versions(&s.policy_history().unwrap()), [1, 2, 3, 4, 5]);
    let (first, more) = s.policy_page(None, 2).unwrap();
    assert_eq!((versions(&first), more), (vec![5, 4], true));
    let (last, more) = s.policy_page(Some(2), 2).unwrap();
    assert_eq!((versions(&last), more), (vec![1], false));
    let (exact, more) = s.policy_page(Some(3), 2).unwrap();
    assert_eq!((versions(&exact), more), (vec![2, 1], false));
}

pub fn derived_states_round_trip_per_name_and_device(s: &dyn Store) {
    assert!(s.derived("software").unwrap().is_empty());
    s.put_derived("software", "a", 3, &json!({"x": 0})).unwrap();
    s.put_derived("software", "a", 7, &json!({"x": 1})).unwrap();
    s.put_derived("software", "b", 9, &json!({"x": 2})).unwrap();
    s.put_derived("other", "a", 1, &json!(null)).unwrap();
    let mut got = s.derived("software").unwrap();
    got.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        got,
        [
            ("a".to_string(), 7, json!({"x": 1})),
            ("b".to_string(), 9, json!({"x": 2}))
        ],
        "the latest per device, and only this name's"
    );
    assert_eq!(
        s.derived_of("software", "a").unwrap(),
        Some((7, json!({"x": 1})))
    );
    assert_eq!(s.derived_of("other", "a").unwrap(), Some((1, json!(null))));
    assert_eq!(s.derived_of("software", "c").unwrap(), None);
}

fn user(name: &str, role: &str) -> UserRecord {
    let now = Utc::now();
    UserRecord {
        username: name.into(),
        role: role.into(),
        password_hash: "$argon2id$stand-in".into(),
        disabled: false,
        email: String::new(),
        must_change_password: true,
        created_at: now,
        created_by: "test".into(),
        updated_at: now,
    }
}

pub fn users_are_unique_and_updated_in_place(s: &dyn Store) {
    assert_eq!(s.user("ann").unwrap(), None);
    s.insert_user(&user("ann", "dsl")).unwrap();
    s.insert_user(&user("bob", "technician")).unwrap();
    let dup = s.insert_user(&user("ann", "technician")).unwrap_err();
    assert!(matches!(dup, StoreError::Conflict(_)), "{dup}");
    assert_eq!(s.user("ann").unwrap().unwrap().role, "dsl", "not replaced");

    let mut ann = s.user("ann").unwrap().unwrap();
    ann.disabled = true;
    ann.must_change_password = false;
    s.update_user(&ann).unwrap();
    assert_eq!(s.user("ann").unwrap().unwrap(), ann);
    let ghost = s.update_user(&user("ghost", "dsl")).unwrap_err();
    assert!(matches!(ghost, StoreError::Conflict(_)), "{ghost}");
    assert_eq!(s.user("ghost").unwrap(), None, "an update creates no one");

    let mut names: Vec<String> = s.users().unwrap().into_iter().map(|u| u.username).collect();
    names.sort();
    assert_eq!(names, ["ann", "bob"]);
}

fn session(username: &str, expires_in: Duration) -> SessionRecord {
    let now = Utc::now();
    SessionRecord {
        username: username.into(),
        created_at: now,
        last_seen: now,
        expires_at: now + expires_in,
        csrf: format!("csrf-{username}"),
    }
}

pub fn sessions_expire_and_are_deleted_per_user(s: &dyn Store) {
    let live = session("ann", Duration::hours(1));
    s.insert_session("h1", &live).unwrap();
    s.insert_session("h2", &session("ann", -Duration::seconds(1)))
        .unwrap();
    s.insert_session("h3", &session("bob", Duration::hours(1)))
        .unwrap();
    assert_eq!(s.session("h1").unwrap(), Some(live));
    assert_eq!(s.session("nope").unwrap(), None);
    assert_eq!(s.purge_sessions(Utc::now()).unwrap(), 1, "only the expired");
    assert_eq!(s.session("h2").unwrap(), None);
    assert_eq!(s.delete_sessions_of("ann").unwrap(), 1);
    assert_eq!(s.session("h1").unwrap(), None);
    assert!(s.session("h3").unwrap().is_some(), "another user's stays");
    s.delete_session("h3").unwrap();
    assert_eq!(s.session("h3").unwrap(), None);
    s.delete_session("h3").unwrap();
}

pub fn api_tokens_are_found_by_hash(s: &dyn Store) {
    let t = ApiTokenRecord {
        hash: "abc".into(),
        label: "MIS sync".into(),
        role: "technician".into(),
        created_at: Utc::now(),
        created_by: "ann".into(),
        revoked_at: None,
    };
    s.insert_api_token(&t).unwrap();
    assert_eq!(s.api_token("abc").unwrap(), Some(t.clone()));
    assert_eq!(s.api_token("abd").unwrap(), None);
    let revoked = ApiTokenRecord {
        revoked_at: Some(Utc::now()),
        ..t
    };
    s.insert_api_token(&revoked).unwrap();
    assert_eq!(s.api_token("abc").unwrap(), Some(revoked));
}

pub fn the_audit_log_only_grows_and_pages_newest_first(s: &dyn Store) {
    let entry = |action: &str| AuditEntry {
        id: 0,
        at: Utc::now(),
        actor: "ann".into(),
        action: action.into(),
        target: "device a".into(),
        detail: String::new(),
        address: "192.0.2.1".into(),
    };
    let ids: Vec<u64> = ["first", "second", "third"]
        .iter()
        .map(|a| s.audit(&entry(a)).unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let page = s.audit_log(None, 2).unwrap();
    let actions = |p: &super::super::AuditPage| {
        p.entries
            .iter()
            .map(|e| (e.id, e.action.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        actions(&page),
        [
            (ids[2], "third".to_string()),
            (ids[1], "second".to_string())
        ]
    );
    let rest = s.audit_log(page.next, 2).unwrap();
    assert_eq!(actions(&rest), [(ids[0], "first".to_string())]);
    assert_eq!(rest.next, None);
}

pub fn settings_versions_count_up(s: &dyn Store) {
    assert_eq!(s.current_settings().unwrap(), None);
    let at = Utc::now();
    let v1 = s.put_settings(json!({"school": "A"}), "ann", at).unwrap();
    let v2 = s.put_settings(json!({"school": "B"}), "bob", at).unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    let current = s.current_settings().unwrap().unwrap();
    assert_eq!(current, v2);
    assert_eq!(current.settings["school"], "B");
}
