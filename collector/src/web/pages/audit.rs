//! The audit log.
use super::*;

struct AuditView {
    when: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
    address: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    rows: Vec<AuditView>,
    next: Option<u64>,
}

#[derive(Deserialize, Default)]
pub struct BeforeParam {
    before: Option<u64>,
}

pub async fn audit(
    State(st): State<AppState>,
    Extension(desk): D,
    Query(p): Query<BeforeParam>,
) -> PageResult {
    let page = desk.audit_log(p.before, 100).await?;
    let tz = tz(&st);
    Ok(render(
        StatusCode::OK,
        &AuditPage {
            chrome: chrome(&desk, &st, "Audit log", "/audit"),
            rows: page
                .entries
                .into_iter()
                .map(|a| AuditView {
                    when: timefmt::date_time(a.at, tz),
                    actor: a.actor,
                    action: a.action.replace('_', " "),
                    target: a.target,
                    detail: a.detail,
                    address: a.address,
                })
                .collect(),
            next: page.next,
        },
    ))
}
