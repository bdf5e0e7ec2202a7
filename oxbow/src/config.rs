//! Command line, environment and TOML settings for `oxbow server`, resolved
//! into one `Settings` (flag or `OXBOW_*` variable, then the file, then the
//! default), and the start-up checks on them: the data directory lock and an
//! object store probe.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use broker::{BrokerConfig, StorageConfig};
use clap::{Parser, Subcommand};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::{path::Path as ObjectPath, ObjectStore, ObjectStoreExt, PutPayload};
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(
    name = "oxbow",
    version,
    about = "Kafka-compatible streaming on object storage"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a whole single-node cluster: controller, broker and (by default)
    /// an object store in a local directory.
    Server(ServerArgs),
    /// Run a broker of a multi-node cluster (its controllers given by
    /// --controllers).
    Broker(BrokerArgs),
    /// Run a controller: one voter of the metadata quorum.
    Controller(ControllerArgs),
    /// Show or change the controller quorum (like kafka-metadata-quorum.sh).
    MetadataQuorum(QuorumArgs),
}

/// `--controllers`, for the broker and the quorum admin tool.
#[derive(clap::Args, Debug)]
pub struct ControllersArg {
    /// Controller RPC addresses, HOST:PORT,HOST:PORT,...
    #[arg(
        long,
        env = "OXBOW_CONTROLLERS",
        value_delimiter = ',',
        required = true
    )]
    pub controllers: Vec<String>,
}

impl ControllersArg {
    /// The addresses, each checked to be HOST:PORT.
    pub fn addresses(self) -> Result<Vec<String>> {
        for c in &self.controllers {
            split_host_port(c, "--controllers entry")?;
        }
        Ok(self.controllers)
    }
}

#[derive(clap::Args, Debug)]
pub struct QuorumArgs {
    #[command(flatten)]
    pub controllers: ControllersArg,
    #[command(subcommand)]
    pub action: QuorumAction,
}

#[derive(Subcommand, Debug)]
pub enum QuorumAction {
    /// Ask each controller for its view: role, leader, term, applied index;
    /// then the voters and learners.
    Describe,
    /// Add a running controller (started with a fresh data directory) as a
    /// voter; prints the voters after the change.
    AddController {
        /// Its id (greater than the smallest voter id).
        #[arg(long)]
        id: u64,
        /// Its RPC address, HOST:PORT, as the other controllers reach it.
        #[arg(long)]
        addr: String,
    },
    /// Remove a controller from the voters (the leader too: it steps down);
    /// prints the voters after the change. Stop it once this returns.
    RemoveController {
        #[arg(long)]
        id: u64,
    },
}

#[derive(clap::Args, Debug)]
pub struct BrokerArgs {
    #[command(flatten)]
    pub common: ServerArgs,
    /// This broker's id (Kafka's node.id); unique in the cluster.
    #[arg(long, env = "OXBOW_NODE_ID")]
    pub node_id: i32,
    #[command(flatten)]
    pub controllers: ControllersArg,
}

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// This controller's id in the quorum.
    #[arg(long, env = "OXBOW_NODE_ID")]
    pub node_id: u64,
    /// Address the controller's RPC listener binds, HOST:PORT.
    #[arg(long, env = "OXBOW_CONTROLLER_LISTEN")]
    pub listen: String,
    /// Every voter of a new quorum: ID=HOST:PORT,ID=HOST:PORT,... (its own
    /// entry included). Used only when the data directory is new.
    #[arg(long, env = "OXBOW_VOTERS", value_delimiter = ',', required = true)]
    pub voters: Vec<String>,
    /// Directory for the Raft log and snapshots.
    #[arg(long, env = "OXBOW_DATA_DIR", default_value = "./oxbow-controller")]
    pub data_dir: PathBuf,
}

impl ControllerArgs {
    /// The voter list as id → address; a malformed entry is an error.
    pub fn voters(&self) -> Result<std::collections::BTreeMap<u64, String>> {
        let mut out = std::collections::BTreeMap::new();
        for v in &self.voters {
            let (id, addr) = v
                .split_once('=')
                .ok_or_else(|| anyhow!("--voters entry '{v}' is not ID=HOST:PORT"))?;
            let id: u64 = id
                .parse()
                .map_err(|_| anyhow!("--voters entry '{v}' has an invalid id"))?;
            split_host_port(addr, "--voters address")?;
            out.insert(id, addr.to_string());
        }
        if !out.contains_key(&self.node_id) {
            bail!(
                "--voters does not include this controller's id {}",
                self.node_id
            );
        }
        Ok(out)
    }
}

#[derive(clap::Args, Debug, Default)]
pub struct ServerArgs {
    /// Directory for the controller's log and the default object store.
    #[arg(long, env = "OXBOW_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address the Kafka listener binds, HOST:PORT.
    #[arg(long, env = "OXBOW_KAFKA_LISTEN")]
    kafka_listen: Option<String>,
    /// HOST:PORT clients are told to connect to (default: the listen address).
    #[arg(long, env = "OXBOW_ADVERTISED_LISTENER")]
    advertised_listener: Option<String>,
    /// Address of the Prometheus endpoint, HOST:PORT.
    #[arg(long, env = "OXBOW_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// file:///path or s3://bucket/prefix (AWS_* variables configure S3).
    #[arg(long, env = "OXBOW_OBJECT_STORE")]
    object_store: Option<String>,
    /// TOML file with any of these settings and the [storage] section.
    #[arg(long, env = "OXBOW_CONFIG")]
    config: Option<PathBuf>,
}

/// The TOML file. Unknown keys are errors: a misspelt setting must not be
/// silently ignored.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    kafka_listen: Option<String>,
    advertised_listener: Option<String>,
    metrics_listen: Option<String>,
    object_store: Option<String>,
    node_id: Option<i32>,
    rack: Option<String>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<u32>,
    max_request_bytes: Option<usize>,
    snapshot_every_entries: Option<u64>,
    storage: Option<FileStorage>,
    groups: Option<FileGroups>,
    transactions: Option<FileTransactions>,
}

/// The `[transactions]` section: Kafka's transaction coordinator settings.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileTransactions {
    transactional_id_expiration_ms: Option<u64>,
}

/// The `[groups]` section: Kafka's group coordinator settings.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileGroups {
    offsets_retention_minutes: Option<u64>,
    offsets_retention_check_interval_ms: Option<u64>,
    consumer_session_timeout_ms: Option<u32>,
    consumer_heartbeat_interval_ms: Option<u32>,
    max_size: Option<usize>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileStorage {
    linger_ms: Option<u64>,
    seal_when_idle: Option<bool>,
    flush_bytes: Option<usize>,
    max_inflight_puts: Option<usize>,
    max_unflushed_bytes: Option<usize>,
    block_bytes: Option<usize>,
    log_cache_bytes: Option<usize>,
    block_cache_bytes: Option<usize>,
    retention_check_ms: Option<u64>,
    object_delete_grace_ms: Option<u64>,
    orphan_min_age_ms: Option<u64>,
    orphan_scan_interval_ms: Option<u64>,
    compaction_interval_ms: Option<u64>,
    compaction_target_bytes: Option<usize>,
    compaction_max_bytes_per_pass: Option<usize>,
    compaction_max_keys: Option<usize>,
    compaction_read_bytes_per_sec: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub kafka_listen: String,
    pub metrics_listen: String,
    pub object_store: String,
    pub broker: BrokerConfig,
    /// The embedded controller snapshots its state every this many log
    /// entries (none: the controller's default).
    pub snapshot_every_entries: Option<u64>,
}

/// Parses the command line; on `--help`/`--version` or a bad flag, prints
/// (bad flags: one line) and returns the exit code to use.
pub fn parse_cli() -> Result<Command, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli.command),
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    Err(ExitCode::SUCCESS)
                }
                _ => {
                    let msg = e.to_string();
                    let first = msg.lines().next().unwrap_or("invalid arguments");
                    eprintln!("oxbow: {}", first.trim_start_matches("error: "));
                    Err(ExitCode::from(2))
                }
            }
        }
    }
}

pub fn split_host_port(s: &str, what: &str) -> Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{what} '{s}' is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow!("{what} '{s}' has an invalid port"))?;
    if host.is_empty() {
        bail!("{what} '{s}' has no host");
    }
    Ok((
        host.trim_matches(|c| c == '[' || c == ']').to_string(),
        port,
    ))
}

fn positive(v: usize, name: &str) -> Result<usize> {
    if v == 0 {
        bail!("{name} must be greater than 0");
    }
    Ok(v)
}

impl Settings {
    pub fn resolve(args: ServerArgs) -> Result<Settings> {
        let file: FileConfig = match &args.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text).map_err(|e| {
                    // Where: the line and its text, so a bad value names its key.
                    let at = e
                        .span()
                        .map(|span| {
                            let line = text
                                .get(..span.start)
                                .map_or(0, |before| before.matches('\n').count());
                            let shown = text.lines().nth(line).unwrap_or("").trim();
                            let shown: String = shown.chars().take(80).collect();
                            format!(", line {} (`{shown}`)", line + 1)
                        })
                        .unwrap_or_default();
                    anyhow!(
                        "config file {}{at}: {}",
                        path.display(),
                        e.message().lines().next().unwrap_or("invalid TOML")
                    )
                })?
            }
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./oxbow-data"));
        let kafka_listen = args
            .kafka_listen
            .or(file.kafka_listen)
            .unwrap_or_else(|| "127.0.0.1:9092".into());
        let (listen_host, listen_port) = split_host_port(&kafka_listen, "--kafka-listen")?;
        let metrics_listen = args
            .metrics_listen
            .or(file.metrics_listen)
            .unwrap_or_else(|| "127.0.0.1:9464".into());
        split_host_port(&metrics_listen, "--metrics-listen")?;
        let advertised = args.advertised_listener.or(file.advertised_listener);
        let (adv_host, adv_port) = match advertised {
            Some(a) => split_host_port(&a, "--advertised-listener")?,
            None if listen_host == "0.0.0.0" || listen_host == "::" => {
                ("127.0.0.1".to_string(), listen_port)
            }
            None => (listen_host, listen_port),
        };
        let object_store = args
            .object_store
            .or(file.object_store)
            .unwrap_or_else(|| format!("file://{}", absolute(&data_dir.join("objects")).display()));

        let mut storage = StorageConfig::default();
        if let Some(st) = file.storage {
            if let Some(v) = st.linger_ms {
                storage.linger = Duration::from_millis(v);
            }
            if let Some(v) = st.seal_when_idle {
                storage.seal_when_idle = v;
            }
            if let Some(v) = st.flush_bytes {
                storage.flush_bytes = positive(v, "storage.flush_bytes")?;
            }
            if let Some(v) = st.max_inflight_puts {
                storage.max_inflight_puts = positive(v, "storage.max_inflight_puts")?;
            }
            if let Some(v) = st.max_unflushed_bytes {
                storage.max_unflushed_bytes = positive(v, "storage.max_unflushed_bytes")?;
            }
            if let Some(v) = st.block_bytes {
                storage.block_bytes = positive(v, "storage.block_bytes")?;
            }
            if let Some(v) = st.log_cache_bytes {
                storage.log_cache_bytes = v;
            }
            if let Some(v) = st.block_cache_bytes {
                storage.block_cache_bytes = v;
            }
            if let Some(v) = st.retention_check_ms {
                storage.retention_check_interval = Duration::from_millis(positive(
                    v as usize,
                    "storage.retention_check_ms",
                )? as u64);
            }
            if let Some(v) = st.object_delete_grace_ms {
                storage.object_delete_grace = Duration::from_millis(v);
            }
            if let Some(v) = st.orphan_min_age_ms {
                storage.orphan_min_age = Duration::from_millis(v);
            }
            if let Some(v) = st.orphan_scan_interval_ms {
                storage.orphan_scan_interval = Duration::from_millis(v);
            }
            if let Some(v) = st.compaction_interval_ms {
                storage.compaction_interval = Duration::from_millis(positive(
                    usize::try_from(v).unwrap_or(usize::MAX),
                    "storage.compaction_interval_ms",
                )? as u64);
            }
            if let Some(v) = st.compaction_target_bytes {
                storage.compaction_target_bytes = positive(v, "storage.compaction_target_bytes")?;
            }
            if let Some(v) = st.compaction_max_bytes_per_pass {
                storage.compaction_max_bytes_per_pass =
                    positive(v, "storage.compaction_max_bytes_per_pass")? as u64;
            }
            if let Some(v) = st.compaction_read_bytes_per_sec {
                storage.compaction_read_bytes_per_sec = v;
            }
            if let Some(v) = st.compaction_max_keys {
                storage.compaction_max_keys = positive(v, "storage.compaction_max_keys")?;
            }
        }
        let mut groups = broker::group::GroupConfig::default();
        if let Some(g) = file.groups {
            if let Some(v) = g.offsets_retention_minutes {
                let minutes = positive(
                    usize::try_from(v).unwrap_or(usize::MAX),
                    "groups.offsets_retention_minutes",
                )?;
                groups.offsets_retention_ms = i64::try_from(minutes)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(60_000);
            }
            if let Some(v) = g.offsets_retention_check_interval_ms {
                groups.offsets_retention_check_ms = positive(
                    usize::try_from(v).unwrap_or(usize::MAX),
                    "groups.offsets_retention_check_interval_ms",
                )? as u64;
            }
            if let Some(v) = g.consumer_session_timeout_ms {
                groups.consumer_session_timeout_ms =
                    i32::try_from(positive(v as usize, "groups.consumer_session_timeout_ms")?)
                        .unwrap_or(i32::MAX);
            }
            if let Some(v) = g.consumer_heartbeat_interval_ms {
                groups.consumer_heartbeat_interval_ms = i32::try_from(positive(
                    v as usize,
                    "groups.consumer_heartbeat_interval_ms",
                )?)
                .unwrap_or(i32::MAX);
            }
            if let Some(v) = g.max_size {
                groups.max_size = positive(v, "groups.max_size")?;
            }
            if groups.consumer_heartbeat_interval_ms >= groups.consumer_session_timeout_ms {
                bail!("groups.consumer_heartbeat_interval_ms must be less than groups.consumer_session_timeout_ms");
            }
        }
        let mut broker = BrokerConfig {
            node_id: file.node_id.unwrap_or(1),
            advertised_host: adv_host,
            advertised_port: adv_port,
            rack: file.rack,
            storage,
            groups,
            ..BrokerConfig::default()
        };
        if let Some(v) = file
            .transactions
            .and_then(|t| t.transactional_id_expiration_ms)
        {
            let ms = positive(
                usize::try_from(v).unwrap_or(usize::MAX),
                "transactions.transactional_id_expiration_ms",
            )?;
            broker.transactional_id_expiration_ms = i64::try_from(ms).unwrap_or(i64::MAX);
        }
        if let Some(v) = file.auto_create_topics {
            broker.auto_create_topics = v;
        }
        if let Some(v) = file.default_partitions {
            if v == 0 {
                bail!("default_partitions must be greater than 0");
            }
            broker.default_partitions = v;
        }
        if let Some(v) = file.max_request_bytes {
            broker.max_request_bytes = v.clamp(1024, i32::MAX as usize);
        }
        let snapshot_every_entries = match file.snapshot_every_entries {
            Some(0) => bail!("snapshot_every_entries must be greater than 0"),
            Some(v) => Some(v),
            None => None,
        };
        Ok(Settings {
            data_dir,
            kafka_listen,
            metrics_listen,
            object_store,
            broker,
            snapshot_every_entries,
        })
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Holds an exclusive lock on the data directory for the process lifetime.
pub fn lock_data_dir(dir: &Path) -> Result<File> {
    let path = dir.join("oxbow.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    match fs4::fs_std::FileExt::try_lock_exclusive(&file) {
        Ok(true) => Ok(file),
        Ok(false) => bail!(
            "data directory {} is locked by another oxbow process",
            dir.display()
        ),
        Err(e) => Err(anyhow!("locking data directory {}: {e}", dir.display())),
    }
}

/// The object store named by the settings and the key prefix inside it.
/// Deletes the staging files (`<key>#<n>`) that the local file store writes
/// before renaming them into place, left behind when a process was killed in
/// the middle of a PUT. They are not objects (listing never shows them), so
/// the orphan collector cannot see them; only Oxbow's own key spaces are
/// swept. A broker sharing the directory that is writing one right now
/// sees its PUT fail and retries it.
fn sweep_staged_files(root: &std::path::Path) {
    fn is_staged(name: &str) -> bool {
        name.rsplit_once('#')
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
    let mut dirs: Vec<PathBuf> = ["sso", "cso"].iter().map(|k| root.join(k)).collect();
    let mut swept = 0u64;
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(p),
                Ok(t)
                    if t.is_file()
                        && e.file_name().to_str().is_some_and(is_staged)
                        && std::fs::remove_file(&p).is_ok() =>
                {
                    swept += 1;
                }
                _ => {}
            }
        }
    }
    if swept > 0 {
        tracing::info!(
            files = swept,
            "removed staging files of interrupted uploads"
        );
    }
}

pub fn object_store(s: &Settings) -> Result<(Arc<dyn ObjectStore>, String)> {
    let url = url::Url::parse(&s.object_store)
        .map_err(|e| anyhow!("--object-store '{}': {e}", s.object_store))?;
    match url.scheme() {
        "file" => {
            let path = PathBuf::from(url.path());
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating object directory {}", path.display()))?;
            sweep_staged_files(&path);
            let store = LocalFileSystem::new_with_prefix(&path)
                .with_context(|| format!("opening object directory {}", path.display()))?
                .with_fsync(true);
            Ok((Arc::new(store), String::new()))
        }
        "s3" => {
            let bucket = url
                .host_str()
                .ok_or_else(|| anyhow!("--object-store '{}' names no bucket", s.object_store))?;
            let prefix = url.path().trim_matches('/');
            let prefix = if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            };
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            let endpoint = std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .ok();
            if let Some(ep) = endpoint {
                if ep.starts_with("http://") {
                    b = b.with_allow_http(true);
                }
                b = b.with_endpoint(ep);
            }
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err()
            {
                b = b.with_region("us-east-1");
            }
            let store = b
                .build()
                .map_err(|e| anyhow!("configuring S3 store '{}': {e}", s.object_store))?;
            Ok((Arc::new(store), prefix))
        }
        other => bail!("--object-store scheme '{other}' is not supported (use file:// or s3://)"),
    }
}

/// Writes, reads back and deletes a small object, so that a wrong endpoint,
/// bucket or credentials fail start-up instead of the first produce.
pub async fn probe_object_store(store: &dyn ObjectStore, prefix: &str) -> Result<()> {
    let key = ObjectPath::from(format!("{prefix}_probe/{}", uuid_like()));
    let body = b"oxbow probe".to_vec();
    let attempt = async {
        store
            .put(&key, PutPayload::from(body.clone()))
            .await
            .context("PUT")?;
        let got = store
            .get(&key)
            .await
            .context("GET")?
            .bytes()
            .await
            .context("GET body")?;
        if got.as_ref() != body.as_slice() {
            bail!("read back different bytes than written");
        }
        store.delete(&key).await.context("DELETE")?;
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(15), attempt)
        .await
        .map_err(|_| anyhow!("no answer within 15 s"))?
        .map_err(|e: anyhow::Error| anyhow!("{}", format!("{e:#}").replace('\n', " ")))
}

fn uuid_like() -> String {
    use proto::seams::Entropy;
    proto::seams::OsEntropy.uuid().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_files_of_killed_uploads_are_swept() {
        let root = std::env::temp_dir().join(format!("oxbow-sweep-{}", std::process::id()));
        let dir = root.join("sso/1/2");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(root.join("other")).unwrap();
        for f in ["0000000000000029#1", "0000000000000030", "x#y"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        std::fs::write(root.join("other/keep#1"), b"x").unwrap();
        sweep_staged_files(&root);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec!["0000000000000030", "x#y"]);
        assert!(
            root.join("other/keep#1").exists(),
            "only Oxbow's key spaces"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
