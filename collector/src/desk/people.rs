//! Accounts (users, roles, API tokens, one's own password), settings, digests and the audit log.
use super::*;

impl Desk {
    pub async fn users(&self) -> DeskResult<Vec<UserRecord>> {
        self.require(Permission::ManageUsers)?;
        let mut u = self.with_store(|s| s.users()).await?;
        u.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(u)
    }

    async fn accounts<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn crate::store::Store, &Actor) -> Result<T, AccountError> + Send + 'static,
    ) -> DeskResult<T> {
        self.require(Permission::ManageUsers)?;
        self.own_account(f).await
    }

    /// Account work any signed-in person may do on their own account.
    async fn own_account<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn crate::store::Store, &Actor) -> Result<T, AccountError> + Send + 'static,
    ) -> DeskResult<T> {
        let (store, actor) = (self.c.store.clone(), self.actor.clone());
        tokio::task::spawn_blocking(move || f(store.as_ref(), &actor))
            .await
            .map_err(|e| DeskError::Store(StoreError::engine("", e)))?
            .map_err(DeskError::from)
    }

    pub async fn set_user_email(&self, username: String, email: String) -> DeskResult<()> {
        self.accounts(move |s, a| accounts::set_email(s, a, &username, &email))
            .await
    }

    /// The settings as stored (the document, for the forms) and parsed, with its version.
    pub async fn settings(
        &self,
    ) -> DeskResult<(
        crate::settings::Settings,
        Value,
        Option<crate::store::SettingsVersion>,
    )> {
        self.require(Permission::ManageSettings)?;
        let v = self.with_store(|s| s.current_settings()).await?;
        let doc = v.as_ref().map(|v| v.settings.clone()).unwrap_or_else(|| {
            serde_json::to_value(crate::settings::Settings::default()).expect("serialises")
        });
        Ok((crate::settings::Settings::parse_lenient(&doc), doc, v))
    }

    pub async fn set_settings(&self, doc: Value) -> DeskResult<crate::store::SettingsVersion> {
        self.require(Permission::ManageSettings)?;
        match self.c.set_settings(doc, &self.actor.name).await {
            Ok(v) => {
                self.audit("settings_changed", &format!("version {}", v.version), "");
                Ok(v)
            }
            Err(crate::service::SetSettingsError::Invalid(e)) => {
                Err(DeskError::Invalid(e.to_string()))
            }
            Err(crate::service::SetSettingsError::Store(e)) => Err(e.into()),
        }
    }

    /// Digests and their delivery: all for the network manager, a DSL's own for a DSL.
    pub async fn digests(&self, limit: usize) -> DeskResult<Vec<crate::store::DigestRecord>> {
        let all = self.may(Permission::ManageSettings);
        if !all && !self.may(Permission::Safeguarding) {
            return Err(DeskError::Forbidden(self.actor.role.label()));
        }
        let me = self.actor.name.clone();
        self.with_store(move |s| {
            Ok(s.digests(None, 10_000)?
                .into_iter()
                .filter(|d| all || d.recipient == me)
                .take(limit)
                .collect())
        })
        .await
    }

    /// Adds an account; returns its one-time password.
    pub async fn add_user(&self, username: String, role: Role) -> DeskResult<String> {
        self.accounts(move |s, a| {
            accounts::add_user(s, a, &username, role, None).map(|p| p.unwrap_or_default())
        })
        .await
    }

    pub async fn set_user_disabled(&self, username: String, disabled: bool) -> DeskResult<()> {
        self.accounts(move |s, a| accounts::set_disabled(s, a, &username, disabled))
            .await
    }

    /// Gives an account a new one-time password; returns it.
    pub async fn reset_password(&self, username: String) -> DeskResult<String> {
        self.accounts(move |s, a| accounts::reset_password(s, a, &username))
            .await
    }

    pub async fn change_role(&self, username: String, role: Role) -> DeskResult<()> {
        self.accounts(move |s, a| accounts::change_role(s, a, &username, role))
            .await
    }

    pub async fn create_api_token(&self, label: String, role: Role) -> DeskResult<String> {
        self.accounts(move |s, a| accounts::create_api_token(s, a, &label, role))
            .await
    }

    pub async fn change_own_password(&self, current: String, new: String) -> DeskResult<()> {
        if self.actor.session.is_none() {
            return Err(DeskError::Invalid(
                "Only a signed-in person can change their password.".into(),
            ));
        }
        self.own_account(move |s, a| accounts::change_own_password(s, a, &current, &new))
            .await
    }

    pub async fn sign_out(&self) -> DeskResult<()> {
        let (store, actor) = (self.c.store.clone(), self.actor.clone());
        Ok(blocking(move || accounts::sign_out(store.as_ref(), &actor)).await?)
    }

    pub async fn audit_log(&self, before: Option<u64>, limit: usize) -> DeskResult<AuditPage> {
        self.require(Permission::ViewAudit)?;
        self.with_store(move |s| s.audit_log(before, limit)).await
    }
}
