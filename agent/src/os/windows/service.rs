//! The agent as a Windows service: `service install|uninstall|start|stop` for a technician (the
//! MSI installs the same service itself), and `service run`, which the Service Control Manager starts.
//!
//! The service is `CaretakerAgent`, own process, automatic start, LocalSystem. On failure the
//! SCM restarts it after 5 s, then 30 s, then every 60 s, the count reset after a day; an agent
//! that ends with an error reports a service-specific exit code, which counts as a failure too
//! (`set_failure_actions_on_non_crash_failures`). `run` sets those actions again at each start,
//! so a service installed by the MSI (whose `ServiceInstall` cannot say them) gets them as well.
//!
//! No `unsafe`: the entry point the SCM calls is an `extern "system" fn` that ignores its raw
//! arguments (the agent reads its configuration from `%ProgramData%\Caretaker`), so nothing
//! here dereferences a pointer.

use std::ffi::OsString;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_dispatcher;
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

/// The service's name, as `sc query CaretakerAgent` and the MSI know it.
pub const SERVICE_NAME: &str = "CaretakerAgent";
const DISPLAY_NAME: &str = "Caretaker Agent";
const DESCRIPTION: &str = "Keeps this laptop to the school's online-safety policies and reports to the school's Caretaker collector.";
/// The exit code an agent that stopped with an error reports, so the SCM's recovery applies.
const FAILED: u32 = 1;

/// Why a service command failed, with Windows' own error as the source.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot {what}: {source}")]
    Windows {
        what: &'static str,
        #[source]
        source: windows_service::Error,
    },
    #[error("cannot find this program's own path: {0}")]
    Exe(#[source] std::io::Error),
    #[error("the service {SERVICE_NAME} is not installed")]
    NotInstalled,
    #[error("the agent stopped with an error: {0}")]
    Agent(String),
    #[error("the service did not stop within 30 s")]
    StopTimeout,
}

fn win(what: &'static str) -> impl FnOnce(windows_service::Error) -> ServiceError {
    move |source| ServiceError::Windows { what, source }
}

/// What the service runs: the agent until the token is cancelled (the SCM's stop or shutdown).
pub type Body = Box<dyn FnOnce(CancellationToken) -> Result<(), String> + Send>;

/// The body `run` hands to the SCM's thread (the entry point takes no closure).
static BODY: Mutex<Option<Body>> = Mutex::new(None);
/// What the body returned, for `run` to report once the dispatcher returns.
static OUTCOME: Mutex<Option<Result<(), String>>> = Mutex::new(None);

/// Installs the service to run this executable with `service run`, sets its recovery, and
/// leaves it stopped (`start` starts it).
pub fn install() -> Result<(), ServiceError> {
    let manager = manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
    let info = ServiceInfo {
        name: OsString::from(SERVICE_NAME),
        display_name: OsString::from(DISPLAY_NAME),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: std::env::current_exe().map_err(ServiceError::Exe)?,
        launch_arguments: vec!["service".into(), "run".into()],
        dependencies: vec![],
        account_name: None, // LocalSystem
        account_password: None,
    };
    let service = manager
        .create_service(
            &info,
            ServiceAccess::CHANGE_CONFIG | ServiceAccess::QUERY_STATUS | ServiceAccess::START,
        )
        .map_err(win("create the service"))?;
    service
        .set_description(DESCRIPTION)
        .map_err(win("describe the service"))?;
    set_recovery(&service)
}

/// Stops the service if it runs, then removes it.
pub fn uninstall() -> Result<(), ServiceError> {
    let service = open(ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE)?;
    stop_and_wait(&service)?;
    service.delete().map_err(win("remove the service"))
}

/// Starts the installed service.
pub fn start() -> Result<(), ServiceError> {
    let service = open(ServiceAccess::START)?;
    service.start::<&str>(&[]).map_err(win("start the service"))
}

/// Stops the service and waits (up to 30 s) until it has.
pub fn stop() -> Result<(), ServiceError> {
    let service = open(ServiceAccess::QUERY_STATUS | ServiceAccess::STOP)?;
    stop_and_wait(&service)
}

/// Hands this thread to the SCM and runs `body` as the service until it is stopped. Returns
/// once the service has stopped; an error if this process was not started by the SCM.
pub fn run(body: Body) -> Result<(), ServiceError> {
    *BODY.lock().expect("service body lock") = Some(body);
    service_dispatcher::start(SERVICE_NAME, service_main).map_err(win(
        "connect to the Service Control Manager (is this run by it?)",
    ))?;
    match OUTCOME.lock().expect("service outcome lock").take() {
        Some(Err(e)) => Err(ServiceError::Agent(e)),
        _ => Ok(()),
    }
}

/// The entry point the SCM calls on a thread of its own. Its arguments (the start
/// parameters, as raw pointers) are not read.
extern "system" fn service_main(_argc: u32, _argv: *mut *mut u16) {
    let outcome = serve();
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "The agent service stopped with an error");
    }
    *OUTCOME.lock().expect("service outcome lock") = Some(outcome);
}

fn serve() -> Result<(), String> {
    let stop = CancellationToken::new();
    let on_stop = stop.clone();
    let (asked, stop_asked) = std::sync::mpsc::channel::<()>();
    let handle = service_control_handler::register(SERVICE_NAME, move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            on_stop.cancel();
            let _ = asked.send(());
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    })
    .map_err(|e| format!("cannot register the service's control handler: {e}"))?;
    // One reporter, so StopPending can never follow Stopped.
    let reporter = std::sync::Arc::new(Mutex::new(Reporter {
        handle,
        stopped: false,
    }));
    reporter.lock().expect("reporter lock").report(
        ServiceState::Running,
        ServiceExitCode::Win32(0),
        Duration::ZERO,
    );
    // Once asked to stop, say so with time to spare: the agent delivers its last events (up
    // to 3 s) before it reports Stopped.
    let pending = reporter.clone();
    std::thread::spawn(move || {
        if stop_asked.recv().is_ok() {
            pending.lock().expect("reporter lock").report(
                ServiceState::StopPending,
                ServiceExitCode::Win32(0),
                Duration::from_secs(15),
            );
        }
    });
    if let Ok(manager) = manager(ServiceManagerAccess::CONNECT)
        && let Ok(service) = manager.open_service(SERVICE_NAME, ServiceAccess::CHANGE_CONFIG)
        && let Err(e) = set_recovery(&service)
    {
        tracing::warn!(error = %e, "Could not set the service's restart on failure");
    }
    let body = BODY.lock().expect("service body lock").take();
    let outcome = match body {
        Some(body) => body(stop),
        None => Err("the service started twice in one process".into()),
    };
    let exit = match outcome {
        Ok(()) => ServiceExitCode::Win32(0),
        Err(_) => ServiceExitCode::ServiceSpecific(FAILED),
    };
    reporter
        .lock()
        .expect("reporter lock")
        .report(ServiceState::Stopped, exit, Duration::ZERO);
    outcome
}

/// Tells the SCM the service's state; nothing more once it has said Stopped.
struct Reporter {
    handle: service_control_handler::ServiceStatusHandle,
    stopped: bool,
}

impl Reporter {
    fn report(&mut self, state: ServiceState, exit: ServiceExitCode, wait_hint: Duration) {
        if self.stopped {
            return;
        }
        self.stopped = state == ServiceState::Stopped;
        let controls_accepted = if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        };
        let status = ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted,
            exit_code: exit,
            checkpoint: 0,
            wait_hint,
            process_id: None,
        };
        if let Err(e) = self.handle.set_service_status(status) {
            tracing::warn!(error = %e, "Could not report the service's state to Windows");
        }
    }
}

/// Restart after 5 s, 30 s, then 60 s; the failure count resets after a day without one.
fn set_recovery(service: &windows_service::service::Service) -> Result<(), ServiceError> {
    let restart = |secs| ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(secs),
    };
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart(5), restart(30), restart(60)]),
        })
        .map_err(win("set the service's restart on failure"))?;
    // Wine has no SERVICE_CONFIG_FAILURE_ACTIONS_FLAG (ERROR_INVALID_LEVEL): there an agent
    // error stops the service without a restart, which only a crash gets.
    match service.set_failure_actions_on_non_crash_failures(true) {
        Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(124) => {
            tracing::warn!(
                "This Windows does not let an agent error count as a failure; only a crash restarts the service"
            );
            Ok(())
        }
        r => r.map_err(win("count an agent error as a failure")),
    }
}

fn manager(access: ServiceManagerAccess) -> Result<ServiceManager, ServiceError> {
    ServiceManager::local_computer(None::<&str>, access).map_err(win(
        "open the Service Control Manager (run as an administrator)",
    ))
}

fn open(access: ServiceAccess) -> Result<windows_service::service::Service, ServiceError> {
    let manager = manager(ServiceManagerAccess::CONNECT)?;
    manager
        .open_service(SERVICE_NAME, access)
        .map_err(|e| match e {
            windows_service::Error::Winapi(ref io) if io.raw_os_error() == Some(1060) => {
                ServiceError::NotInstalled // ERROR_SERVICE_DOES_NOT_EXIST
            }
            e => ServiceError::Windows {
                what: "open the service",
                source: e,
            },
        })
}

fn stop_and_wait(service: &windows_service::service::Service) -> Result<(), ServiceError> {
    let now = service.query_status().map_err(win("query the service"))?;
    if now.current_state == ServiceState::Stopped {
        return Ok(());
    }
    if now.current_state != ServiceState::StopPending {
        service.stop().map_err(win("stop the service"))?;
    }
    for _ in 0..300 {
        let s = service.query_status().map_err(win("query the service"))?;
        if s.current_state == ServiceState::Stopped {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(ServiceError::StopTimeout)
}
