//! `oxbow`: one binary for every Oxbow process. `oxbow server` runs a whole
//! single-node cluster in one process: a one-member Raft controller, one
//! broker, and an object store in a local directory (or any S3-compatible
//! store). Start-up either completes or exits with one line naming the
//! problem; nothing is left half-started.

mod alloc;
mod config;
mod metrics_http;
mod quorum;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use broker::controller_client::{RemoteController, RemoteControllerConfig};
use broker::Broker;
use controller::{Controller, ControllerConfig};
use proto::rpc::ControllerApi;
use proto::seams::{Seams, TokioNet};
use tokio::sync::watch;
use tracing::{info, warn};

#[global_allocator]
static ALLOCATOR: alloc::OxbowAllocator = alloc::OxbowAllocator;

fn main() -> ExitCode {
    let command = match config::parse_cli() {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    // Flags and config are checked before anything starts.
    let mode = match Mode::resolve(command) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("oxbow: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("oxbow: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match mode {
            Mode::Server(s) => run_server(s).await,
            Mode::Broker(s, controllers) => run_broker(s, controllers).await,
            Mode::Controller(c) => run_controller(c).await,
            Mode::Quorum(controllers, action) => quorum::run(controllers, action).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oxbow: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Mode {
    Server(config::Settings),
    Broker(config::Settings, Vec<String>),
    Controller(ControllerConfig),
    Quorum(Vec<String>, config::QuorumAction),
}

impl Mode {
    fn resolve(command: config::Command) -> Result<Mode> {
        Ok(match command {
            config::Command::Server(args) => Mode::Server(config::Settings::resolve(args)?),
            config::Command::Broker(args) => {
                let mut s = config::Settings::resolve(args.common)?;
                s.broker.node_id = args.node_id;
                Mode::Broker(s, args.controllers.addresses()?)
            }
            config::Command::Controller(args) => {
                let mut c = ControllerConfig::new(args.node_id, args.data_dir.clone());
                c.voters = args.voters()?;
                config::split_host_port(&args.listen, "--listen")?;
                c.rpc_addr = args.listen.clone();
                Mode::Controller(c)
            }
            config::Command::MetadataQuorum(args) => {
                if let config::QuorumAction::AddController { addr, .. } = &args.action {
                    config::split_host_port(addr, "--addr")?;
                }
                Mode::Quorum(args.controllers.addresses()?, args.action)
            }
        })
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn run_server(s: config::Settings) -> Result<()> {
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("creating data directory {}", s.data_dir.display()))?;
    let _lock = config::lock_data_dir(&s.data_dir)?;
    let mut ccfg = ControllerConfig::new(1, s.data_dir.join("controller"));
    ccfg.rpc_addr = String::new();
    if let Some(n) = s.snapshot_every_entries {
        ccfg.snapshot_every_entries = n;
    }
    let controller = Arc::new(
        Controller::start(ccfg)
            .await
            .context("starting the embedded controller")?,
    );
    let api: Arc<dyn ControllerApi> = controller.clone();
    let result = serve_broker(&s, api, None).await;
    match Arc::try_unwrap(controller) {
        Ok(c) => c.shutdown().await,
        Err(_) => warn!("controller still referenced at exit; its store is crash-safe"),
    }
    result
}

async fn run_broker(s: config::Settings, controllers: Vec<String>) -> Result<()> {
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("creating data directory {}", s.data_dir.display()))?;
    let _lock = config::lock_data_dir(&s.data_dir)?;
    let remote = Arc::new(
        RemoteController::new(
            controllers.clone(),
            RemoteControllerConfig::default(),
            Arc::new(TokioNet),
        )
        .map_err(|e| anyhow::anyhow!("controllers {controllers:?}: {e}"))?,
    );
    let api: Arc<dyn ControllerApi> = remote.clone();
    serve_broker(&s, api, Some(remote)).await
}

async fn run_controller(cfg: ControllerConfig) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let _lock = config::lock_data_dir(&cfg.data_dir)?;
    let node_id = cfg.node_id;
    let listen = cfg.rpc_addr.clone();
    let controller = Controller::start(cfg)
        .await
        .with_context(|| format!("starting controller {node_id}"))?;
    info!(node_id, listen = %listen, "oxbow controller ready");
    wait_for_signal().await;
    info!(node_id, "shutting down: handing leadership off");
    controller.shutdown().await;
    info!("stopped");
    Ok(())
}

/// Runs a broker against `api` until SIGTERM/SIGINT, then flushes, hands its
/// partitions off and returns.
async fn serve_broker(
    s: &config::Settings,
    api: Arc<dyn ControllerApi>,
    remote: Option<Arc<RemoteController>>,
) -> Result<()> {
    let seams = Seams::production();
    let metrics_listener = seams
        .net
        .bind(&s.metrics_listen)
        .await
        .with_context(|| format!("binding the metrics listener on {}", s.metrics_listen))?;
    let metrics_handle = metrics_http::install()?;

    let (store, key_prefix) = config::object_store(s)?;
    config::probe_object_store(&*store, &key_prefix)
        .await
        .with_context(|| format!("object store {} is not usable", s.object_store))?;

    let broker = Broker::start(s.broker.clone(), api, store, key_prefix, seams.clone())
        .await
        .context("starting the broker")?;

    // Bound last: the Kafka port accepts connections only once the broker
    // can serve them.
    let kafka_listener = match seams.net.bind(&s.kafka_listen).await {
        Ok(l) => l,
        Err(e) => {
            broker.shutdown().await;
            return Err(anyhow::anyhow!(
                "binding the Kafka listener on {}: {e}",
                s.kafka_listen
            ));
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics_task = tokio::spawn(metrics_http::serve(
        metrics_listener,
        metrics_handle,
        stop_rx.clone(),
    ));
    let kafka_task = tokio::spawn(broker::kafka::run_listener(
        kafka_listener,
        broker.clone(),
        stop_rx.clone(),
    ));
    let heartbeat_task = remote.map(|r| {
        tokio::spawn(broker::broker::heartbeat_loop(
            broker.clone(),
            r,
            stop_rx.clone(),
        ))
    });
    info!(
        broker_id = broker.id,
        kafka = %s.kafka_listen,
        advertised = %format!("{}:{}", s.broker.advertised_host, s.broker.advertised_port),
        metrics = %s.metrics_listen,
        object_store = %s.object_store,
        "oxbow ready"
    );

    wait_for_signal().await;
    info!("shutting down: flushing and committing buffered data");
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(20), broker.shutdown())
        .await
        .is_err()
    {
        warn!("broker did not finish flushing within 20 s");
    }
    let _ = kafka_task.await;
    let _ = metrics_task.await;
    if let Some(t) = heartbeat_task {
        let _ = t.await;
    }
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can only be killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
