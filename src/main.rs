//! The `sluice` command: parses arguments, sets up logging, loads the config and hands over to
//! [`sluice::app`]. Exit status: 0 after a clean shutdown, 2 on a config error (nothing is
//! started), 1 on any other start-up failure.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sluice::app::{self, App};
use sluice::config::{self, Config};

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "A reverse proxy that protects APIs from overload",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Log line format on stderr (filter with RUST_LOG, e.g. RUST_LOG=sluice=debug).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// What `--help` says after the options: what a script and an operator need besides them.
const AFTER_HELP: &str = "\
Exit status:
  0  clean shutdown (run, demo) or a valid config (check)
  1  a start-up failure other than the config (an address in use, no runtime)
  2  a config error, printed as FILE:LINE:COLUMN: FIELD: MESSAGE; nothing was started

Signals (run, demo):
  SIGHUP           reload the config file; a bad file is logged and the running config kept
  SIGTERM, SIGINT  stop accepting, let requests in flight finish (server.shutdown_grace), exit

Environment:
  SLUICE_CONFIG  the config file when -c is not given
  RUST_LOG       log filter (default: info), e.g. RUST_LOG=sluice=debug or sluice::access=info

Every config field, status, header and metric: docs/reference.md";

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy.
    Run(ConfigFile),
    /// Validate the config and print a summary of listeners, upstreams, routes and limits.
    Check {
        #[command(flatten)]
        file: ConfigFile,
        /// Do not resolve the endpoints' names (the summary then says nothing of them).
        #[arg(long)]
        offline: bool,
    },
    /// Start a built-in sample upstream of limited capacity and sluice in front of it, and
    /// print commands that show 200, 429 and 503. The sample API listens on the first endpoint
    /// of the config's first upstream (127.0.0.1:9000 in config/demo.yaml), sluice on its
    /// `server.listen` (127.0.0.1:8080) and the dashboard on `admin.listen` (127.0.0.1:9901).
    Demo {
        /// The demo config.
        #[arg(short, long, default_value = "config/demo.yaml")]
        config: PathBuf,
    },
}

/// `--config`, as `run` and `check` take it.
#[derive(Args, Debug)]
struct ConfigFile {
    /// The config file.
    #[arg(
        short,
        long,
        env = "SLUICE_CONFIG",
        default_value = "config/sluice.yaml"
    )]
    config: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check {
            file: ConfigFile { config: path },
            offline,
        } => match config::load(&path) {
            Ok(config) => check(&config, &path, offline),
            Err(err) => config_error(&err),
        },
        Command::Run(ConfigFile { config }) => match config::load(&config).and_then(resolvable) {
            Ok(config) => serve(config, None),
            Err(err) => config_error(&err),
        },
        Command::Demo { config } => {
            let path = demo_path(&config);
            match config::load(&path) {
                Ok(config) => serve(config, Some(path)),
                Err(err) => config_error(&err),
            }
        }
    }
}

/// `sluice check`: the summary, then (unless `offline`) what each name resolves to now; exit 2
/// when an upstream has no endpoint that resolves.
fn check(config: &Config, path: &Path, offline: bool) -> ExitCode {
    // Not `print!`: a reader that stops early (`sluice check | head`) closes the pipe, and the
    // config is valid all the same.
    let _ = write!(std::io::stdout().lock(), "{config}");
    // Valid but most likely not meant: said, and still exit 0.
    for warning in config::warnings(config) {
        let _ = writeln!(std::io::stderr().lock(), "{}: {warning}", path.display());
    }
    if offline {
        return ExitCode::SUCCESS;
    }
    let resolutions = app::Resolutions::of(config);
    let _ = write!(std::io::stdout().lock(), "{resolutions}");
    match resolutions.errors() {
        errors if errors.is_empty() => ExitCode::SUCCESS,
        errors => config_error(&config::field_errors(&config.source, errors)),
    }
}

/// `config` when every upstream has an endpoint that resolves now (see [`check`]).
fn resolvable(config: Config) -> Result<Config, config::ConfigError> {
    match app::Resolutions::of(&config).errors() {
        errors if errors.is_empty() => Ok(config),
        errors => Err(config::field_errors(&config.source, errors)),
    }
}

/// `config/demo.yaml` is relative to the project; when run from elsewhere, fall back to the copy
/// beside the sources this binary was built from.
fn demo_path(path: &Path) -> PathBuf {
    if path.exists() || path.is_absolute() {
        return path.to_path_buf();
    }
    let beside_sources = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    if beside_sources.exists() {
        beside_sources
    } else {
        path.to_path_buf()
    }
}

fn config_error(err: &config::ConfigError) -> ExitCode {
    eprintln!("{err}");
    ExitCode::from(2)
}

/// Runs sluice on `config`; with `demo` (the demo's config file), the sample upstream too.
fn serve(config: Config, demo: Option<PathBuf>) -> ExitCode {
    // One worker: a current-thread runtime, like one NGINX worker — no cross-thread wake-ups or
    // work-stealing bookkeeping on the hot path. More: tokio's multi-thread scheduler.
    let mut builder = match config.server.workers.map(|w| w.get()) {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let sample = match &demo {
            None => None,
            Some(_) => match sluice::demo::start_upstream(&config).await {
                Ok(sample) => Some(sample),
                Err(err) => {
                    eprintln!("{err}");
                    return ExitCode::from(1);
                }
            },
        };
        let app = match App::bind(config).await {
            Ok(app) => app,
            Err(err) => {
                eprintln!("{err}");
                return ExitCode::from(1);
            }
        };
        if let (Some(path), Some(sample)) = (&demo, sample) {
            sluice::demo::print_instructions(app.http_addr(), app.admin_addr(), sample, path);
        }
        app::spawn_signal_handlers(app.shutdown_handle());
        app.run().await;
        ExitCode::SUCCESS
    })
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never into a file or a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

// mimalloc: the request path allocates a few small buffers per request (header maps, futures);
// mimalloc's thread-local free lists serve them in a fraction of glibc malloc's instructions.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
