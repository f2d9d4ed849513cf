//! `ratewise-proxy`: an OpenAI-compatible LLM gateway (see `ratewise::proxy`).
//!
//! ```text
//! ratewise-proxy --config proxy.toml [--listen 127.0.0.1:8080] [--redis redis://127.0.0.1/]
//! ratewise-proxy --demo [--exit-after 5]
//! ```
//!
//! The arguments are read by hand: five flags do not need a parser crate.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use ratewise::{
    proxy::{Proxy, ProxyConfig},
    testing::{glm, openai, GlmApi, MockServer, OpenAiApi},
    BoxError,
};
use tokio::net::TcpListener;

const USAGE: &str = "\
ratewise-proxy: an OpenAI-compatible LLM gateway that keeps every backend inside its limits

USAGE:
    ratewise-proxy --config FILE [--listen ADDR] [--redis URL]
    ratewise-proxy --demo [--listen ADDR] [--exit-after SECS]

OPTIONS:
    --config FILE       the TOML configuration (see examples/proxy.toml); environment
                        variables RATEWISE_PROXY__<PATH> override its keys
                        (RATEWISE_PROXY__BACKENDS__GLM__RPM=30)
    --listen ADDR       the address to serve on (default: the file's `listen`, else
                        127.0.0.1:8080)
    --redis URL         share every backend's limit and cooldown through Redis
    --demo              serve the crate's GLM and OpenAI-like simulators as backends
    --exit-after SECS   stop by itself after SECS seconds (for smoke tests)
    -h, --help          this text
    -V, --version       the version

Logs go to stderr; RATEWISE_LOG=error|warn|info|debug|trace sets the level (default info).";

/// The command line.
#[derive(Debug, Default)]
struct Args {
    config: Option<String>,
    listen: Option<SocketAddr>,
    redis: Option<String>,
    demo: bool,
    exit_after: Option<Duration>,
}

#[derive(Debug)]
enum Parsed {
    Run(Args),
    Print(String),
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Parsed, String> {
    let mut args = Args::default();
    while let Some(arg) = argv.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Print(USAGE.to_owned())),
            "-V" | "--version" => {
                return Ok(Parsed::Print(format!(
                    "ratewise-proxy {}",
                    env!("CARGO_PKG_VERSION")
                )))
            }
            "--config" => args.config = Some(value("--config")?),
            "--listen" => {
                let text = value("--listen")?;
                args.listen = Some(text.parse().map_err(|e| {
                    format!("--listen {text:?} is not an address like 127.0.0.1:8080: {e}")
                })?);
            }
            "--redis" => args.redis = Some(value("--redis")?),
            "--demo" => args.demo = true,
            "--exit-after" => {
                let text = value("--exit-after")?;
                let secs: f64 = text
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| format!("--exit-after {text:?} is not a number of seconds"))?;
                args.exit_after = Some(Duration::from_secs_f64(secs));
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if args.config.is_some() == args.demo {
        return Err("give either --config FILE or --demo (see --help)".to_owned());
    }
    Ok(Parsed::Run(args))
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Print(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("ratewise-proxy: {err}");
            return ExitCode::from(2);
        }
    };
    init_logs();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("ratewise-proxy: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ratewise-proxy: {err}");
            ExitCode::from(2)
        }
    }
}

fn init_logs() {
    let level = std::env::var("RATEWISE_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

async fn run(args: Args) -> Result<(), BoxError> {
    // The demo's simulators live as long as the proxy.
    let mut simulators: Vec<MockServer> = Vec::new();
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the config file {path}: {e}"))?;
            ProxyConfig::from_toml_and_env(&text, std::env::vars())
                .map_err(|e| format!("{path}: {e}"))?
        }
        None => demo_config(&mut simulators).await?,
    };
    let config = match args.redis {
        Some(url) => config.with_redis_url(url),
        None => config,
    };
    let proxy = Proxy::from_config(config)?;
    let addr = args
        .listen
        .or(proxy.listen())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let url = format!("http://{}", listener.local_addr()?);
    println!("ratewise-proxy listening on {url}");
    if args.demo {
        println!("  demo backends: `glm` (GLM simulator, 5 calls per 10 s, then 429 code 1302) and `openai` (OpenAI-like simulator, 60 per minute)");
        println!("  model `glm-4`: glm first, then openai; model `gpt-4o-mini`: openai only");
        println!(
            "  try:  curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\"
        );
        println!("          -d '{{\"model\":\"glm-4\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'");
        println!("  dashboard {url}/   stats {url}/stats   metrics {url}/metrics");
    }
    println!("  Ctrl-C to stop");
    let exit_after = args.exit_after;
    let shutdown = async move {
        match exit_after {
            Some(after) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    () = tokio::time::sleep(after) => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        println!("ratewise-proxy: shutting down");
    };
    proxy.serve(listener, shutdown).await?;
    drop(simulators);
    println!("ratewise-proxy: stopped");
    Ok(())
}

/// Starts the simulators on 127.0.0.1 and returns a configuration pointing at them.
async fn demo_config(simulators: &mut Vec<MockServer>) -> Result<ProxyConfig, BoxError> {
    let glm = GlmApi::new()
        .limit(5)
        .window(Duration::from_secs(10))
        .stream_gap(Duration::from_millis(150));
    let fallback = OpenAiApi::new()
        .name("openai")
        .limit(60)
        .window(Duration::from_secs(60))
        .stream_gap(Duration::from_millis(150));
    let glm_server = MockServer::start(glm.router()).await?;
    let openai_server = MockServer::start(fallback.router()).await?;
    let glm_base = glm_server.url(glm::PATH.trim_end_matches("/chat/completions"));
    let openai_base = openai_server.url(openai::PATH.trim_end_matches("/chat/completions"));
    simulators.push(glm_server);
    simulators.push(openai_server);
    let text = format!(
        r#"
        [backends.glm]
        kind = "glm"
        base_url = "{glm_base}"
        rpm = 60
        burst = 10

        [backends.openai]
        kind = "openai"
        base_url = "{openai_base}"
        rpm = 60
        max_concurrency = 16

        [models.glm-4]
        primary = ["glm"]
        fallback = ["openai"]

        [models.gpt-4o-mini]
        primary = ["openai"]

        [cooldown]
        backoff = "exponential"
        base = "2s"
        cap = "30s"
        precheck = "500ms"

        [routing]
        max_wait = "5s"

        [timeouts]
        shutdown = "5s"
        "#
    );
    Ok(ProxyConfig::from_toml(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Parsed, String> {
        parse(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn flags_parse_and_bad_ones_say_why() {
        let Ok(Parsed::Run(a)) = args(&["--demo", "--listen", "127.0.0.1:0", "--exit-after=1.5"])
        else {
            panic!("demo args");
        };
        assert!(a.demo);
        assert_eq!(a.listen, Some(SocketAddr::from(([127, 0, 0, 1], 0))));
        assert_eq!(a.exit_after, Some(Duration::from_millis(1500)));
        let Ok(Parsed::Run(a)) = args(&["--config", "p.toml", "--redis", "redis://127.0.0.1/"])
        else {
            panic!("config args");
        };
        assert_eq!(a.config.as_deref(), Some("p.toml"));
        assert_eq!(a.redis.as_deref(), Some("redis://127.0.0.1/"));
        assert!(args(&[]).unwrap_err().contains("--config FILE or --demo"));
        assert!(args(&["--demo", "--config", "x"]).is_err());
        assert!(args(&["--demo", "--listen", "nowhere"])
            .unwrap_err()
            .contains("--listen"));
        assert!(args(&["--demo", "--exit-after", "-1"]).is_err());
        assert!(args(&["--config"]).unwrap_err().contains("needs a value"));
        assert!(args(&["--bogus"]).unwrap_err().contains("unknown argument"));
        assert!(matches!(args(&["--help"]), Ok(Parsed::Print(_))));
    }
}
