//! The process's log: its format, and its filter, which may change while it runs
//! ([`crate::reload`]).

use std::sync::Arc;

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Sets the log filter of the running process (as `EFMS_LOG` takes it), or says why it is not one.
pub type SetLogFilter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The filter when `EFMS_LOG` names none.
const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=info";

/// Logs to standard error in `format`, filtered by `EFMS_LOG`; answers the way to change the
/// filter from now on.
pub fn init(format: LogFormat) -> SetLogFilter {
    let filter =
        EnvFilter::try_from_env("EFMS_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Arc::new(move |text| {
                let filter = EnvFilter::try_new(text).map_err(|error| error.to_string())?;
                handle.reload(filter).map_err(|error| error.to_string())
            })
        }
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Arc::new(move |text| {
                let filter = EnvFilter::try_new(text).map_err(|error| error.to_string())?;
                handle.reload(filter).map_err(|error| error.to_string())
            })
        }
    }
}
