//! `efms`: serve the control plane, migrate its database, rebuild or verify its read models,
//! print an access token, run a VM's fleet agent, or probe a server's readiness.

use std::process::ExitCode;

use clap::Parser as _;
use efms_api::settings::{
    validate_master_key, validate_secret, Cli, Command, LogFormat, RotateArgs, TokenArgs,
};
use efms_api::JwtKeys;
use efms_domain::{Role, TenantSlug};

/// The process's allocator. Serving a thousand agents' streams allocates and frees many small
/// buffers across threads; glibc's allocator spent about a third of the control plane's CPU
/// on that in the fleet benchmark (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("efms: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => match args.validate() {
            Ok(config) => {
                let set_log_filter = efms_api::logging::init(config.log_format);
                runtime.block_on(efms_api::server::run(config, set_log_filter))
            }
            Err(error) => return config_error(&error),
        },
        Command::Migrate(args) => match args.validate() {
            Ok(config) => {
                let _ = efms_api::logging::init(LogFormat::Text);
                runtime.block_on(async {
                    let pool = efms_api::db::connect(&config).await?;
                    efms_api::db::migrate(&pool).await?;
                    tracing::info!("the database schema is up to date");
                    Ok(())
                })
            }
            Err(error) => return config_error(&error),
        },
        Command::Token(args) => return token(&args),
        Command::Agent(args) => match args.validate() {
            Ok(config) => {
                let _ = efms_api::logging::init(config.log_format);
                runtime.block_on(async {
                    efms_agent::link::run(config.link, efms_api::server::shutdown_signal()).await?;
                    Ok(())
                })
            }
            Err(error) => return config_error(&error),
        },
        Command::Replay(args) => match args.validate() {
            Ok((database, rebuild)) => {
                let _ = efms_api::logging::init(LogFormat::Text);
                runtime.block_on(async {
                    let pool = efms_api::db::connect(&database).await?;
                    efms_api::db::migrate(&pool).await?;
                    efms_api::replay::replay(&pool, rebuild).await?;
                    Ok(())
                })
            }
            Err(error) => return config_error(&error),
        },
        Command::Verify(args) => match args.validate() {
            Ok(database) => {
                let _ = efms_api::logging::init(LogFormat::Text);
                runtime.block_on(async {
                    let pool = efms_api::db::connect(&database).await?;
                    let verified = efms_api::verify::verify(&pool).await?;
                    let differing: Vec<&str> = verified
                        .iter()
                        .filter(|read_model| !read_model.agrees())
                        .map(|read_model| read_model.projection)
                        .collect();
                    if differing.is_empty() {
                        println!("every read model equals its rebuild from the log");
                        Ok(())
                    } else {
                        anyhow::bail!(
                            "read models that differ from their rebuild from the log: {}",
                            differing.join(", ")
                        )
                    }
                })
            }
            Err(error) => return config_error(&error),
        },
        Command::Probe(args) => runtime.block_on(efms_api::probe::probe(&args)),
        Command::RotateMasterKey(args) => match rotation(&args) {
            Ok(rotation) => {
                let _ = efms_api::logging::init(LogFormat::Text);
                runtime.block_on(rotation)
            }
            Err(error) => return config_error(&error),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "efms failed");
            eprintln!("efms: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The key rotation `args` ask for, checked.
fn rotation(
    args: &RotateArgs,
) -> Result<impl std::future::Future<Output = anyhow::Result<()>>, efms_api::settings::ConfigError>
{
    let database = args.database.validate()?;
    let old = validate_master_key("EFMS_MASTER_KEY (--master-key)", args.master_key.as_deref())?;
    let new = validate_master_key(
        "EFMS_NEW_MASTER_KEY (--new-master-key)",
        args.new_master_key.as_deref(),
    )?;
    Ok(async move {
        let pool = efms_api::db::connect(&database).await?;
        efms_api::db::migrate(&pool).await?;
        let moved = efms_commands::keys::rewrap(&pool, &old, &new).await?;
        tracing::info!(
            moved,
            new_master_key = new.fingerprint(),
            "data keys re-wrapped; serve with the new key as EFMS_MASTER_KEY"
        );
        Ok(())
    })
}

fn config_error(error: &efms_api::settings::ConfigError) -> ExitCode {
    eprintln!("efms: {error}");
    ExitCode::from(2)
}

fn token(args: &TokenArgs) -> ExitCode {
    let issued = (|| {
        let secret =
            validate_secret(args.jwt_secret.as_deref()).map_err(|error| error.to_string())?;
        let role: Role = args
            .role
            .parse()
            .map_err(|error| format!("--role: {error}"))?;
        let tenant = args
            .tenant
            .as_deref()
            .map(TenantSlug::parse)
            .transpose()
            .map_err(|error| format!("--tenant: {error}"))?;
        let ttl =
            efms_api::auth::parse_ttl(&args.ttl).map_err(|error| format!("--ttl: {error}"))?;
        JwtKeys::from_secret(&secret).issue(&args.subject, role, tenant.as_ref(), ttl)
    })();
    match issued {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("efms token: {error}");
            ExitCode::from(2)
        }
    }
}
