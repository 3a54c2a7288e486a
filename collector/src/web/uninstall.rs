//! The device's uninstall-code page, for the network manager and technicians removing the agent from a laptop.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::AppState;
use super::pages::{PageResult, chrome};
use super::views::{Chrome, render};
use crate::desk::Desk;

#[derive(Template)]
#[template(path = "uninstall_code.html")]
struct UninstallCodePage {
    chrome: Chrome,
    id: String,
    hostname: String,
    code: String,
    /// Who runs the command on the laptop ("as root", "as an administrator").
    who: &'static str,
    command: String,
}

/// `GET /devices/{id}/uninstall-code`: the code, each viewing audited by the desk.
pub async fn page(
    State(st): State<AppState>,
    Extension(desk): Extension<Arc<Desk>>,
    Path(id): Path<String>,
) -> PageResult {
    let (device, code) = desk.uninstall_code(&id)?;
    let (who, command) = crate::uninstall::removal_command(&device.os, &code);
    Ok(render(
        StatusCode::OK,
        &UninstallCodePage {
            chrome: chrome(&desk, &st, "Uninstall code", "/devices"),
            id: device.id,
            hostname: device.hostname,
            code,
            who,
            command,
        },
    ))
}
