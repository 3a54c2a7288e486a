//! The monitoring report, for whoever may have the version asked for.
use super::*;

impl Desk {
    /// May this person have the report for `audience`? The governors' version needs
    /// `GovernorsReport`; the version that names pupils and laptops needs `Safeguarding`.
    fn require_report(&self, audience: crate::report::Audience) -> DeskResult<()> {
        self.require(match audience {
            crate::report::Audience::Governors => Permission::GovernorsReport,
            crate::report::Audience::Dsl => Permission::Safeguarding,
        })
    }

    /// The monitoring report as files (PDF, standalone HTML, or one CSV per table).
    pub async fn report(
        &self,
        req: crate::report::ReportRequest,
        tz: chrono_tz::Tz,
    ) -> DeskResult<Vec<crate::report::ReportFile>> {
        self.require_report(req.audience)?;
        let what = format!("{:?} {:?}", req.format, req.period).to_lowercase();
        let files = crate::report::render_for(self.c.clone(), req.clone(), tz)
            .await
            .map_err(report_error)?;
        self.audit("report_downloaded", req.audience.as_str(), &what);
        Ok(files)
    }

    /// The monitoring report as a dashboard fragment: `(period label, html)`.
    pub async fn report_fragment(
        &self,
        spec: crate::report::PeriodSpec,
        audience: crate::report::Audience,
        tz: chrono_tz::Tz,
    ) -> DeskResult<(String, String)> {
        self.require_report(audience)?;
        let what = format!("{spec:?}").to_lowercase();
        let page = crate::report::fragment_for(self.c.clone(), spec, audience, tz)
            .await
            .map_err(report_error)?;
        // Opening the version that names pupils is recorded, like opening an incident.
        if audience == crate::report::Audience::Dsl {
            self.audit("report_viewed", audience.as_str(), &what);
        }
        Ok(page)
    }
}

fn report_error(e: crate::report::ReportError) -> DeskError {
    match e {
        crate::report::ReportError::Store(e) => DeskError::Store(e),
        other => DeskError::Invalid(other.to_string()),
    }
}
