//! Cluster metadata on etcd (cargo feature `etcd`): engines find each other by
//! name, see restarts, and notice departures.
//!
//! [`Cluster::join`] publishes an engine's metadata under `<namespace>/<name>` with
//! a lease the cluster keeps alive, and re-publishes it (a new version) whenever
//! the engine's registrations change. [`Cluster::fetch_peer`] loads a peer by name;
//! from then on the cluster watches it:
//!
//! - the peer re-publishes (new registrations): it is reloaded in place, same id;
//! - the peer restarted (a new engine under the name): the old incarnation is
//!   unloaded (its mappings closed, so no transfer reaches its keys) and the new
//!   one loaded under a new id, which [`Cluster::peer`] returns;
//! - the peer's lease expired (killed, partitioned): it is declared lost
//!   ([`Engine::lose_peer`]): transfers in flight to it fail `PEER_LOST`, new
//!   `prepare`s fail with [`Error::PeerLost`].
//!
//! The etcd client is asynchronous; its runtime lives in one thread the cluster
//! owns, on the control path only. The hot path never sees it: a peer loaded from
//! the store is an ordinary peer. When etcd goes away, transfers between loaded
//! peers go on; [`fetch_peer`](Cluster::fetch_peer) and
//! [`list_peers`](Cluster::list_peers) fail with [`Error::MetadataStore`] naming
//! the endpoints; the thread reconnects every half second and, once etcd is back,
//! registers again under a new lease and re-reads the peers it follows.
//!
//! A value under the namespace is `RXE1`, a version (u64, little-endian) and the
//! engine's metadata blob. Anything else is refused for that one peer
//! ([`Error::Metadata`]); the watch thread counts it and goes on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc as amp;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::types::PeerId;
use crate::wire::cluster_value;
use crate::wire::metadata::{Metadata, MetadataError};

/// Where the cluster's metadata lives and how long a registration outlives its
/// engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// etcd endpoints, `host:port` or `http://host:port`. At least one.
    pub endpoints: Vec<String>,
    /// The key prefix every engine of this cluster registers under (`/ringxfer`).
    /// Engines in different namespaces do not see each other.
    pub namespace: String,
    /// The lease's time to live, 1 s ..= 1 h (default 10 s): an engine killed or
    /// cut off is noticed by its peers within about this long.
    pub ttl: Duration,
    /// How long one request to etcd may take before it is an error (default 2 s).
    pub timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> EtcdConfig {
        EtcdConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            namespace: "/ringxfer".into(),
            ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        }
    }
}

impl EtcdConfig {
    fn validate(&self) -> Result<()> {
        let bad = |field, reason| Err(Error::InvalidConfig { field, reason });
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return bad("etcd.endpoints", "needs at least one endpoint, none empty");
        }
        if !self.namespace.starts_with('/') || self.namespace.ends_with('/') || self.namespace.len() > 512 {
            return bad(
                "etcd.namespace",
                "must start with '/', not end with one, at most 512 bytes",
            );
        }
        if self.ttl < Duration::from_secs(1) || self.ttl > Duration::from_secs(3600) {
            return bad("etcd.ttl", "must be 1 s to 1 h (etcd leases count whole seconds)");
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return bad("etcd.timeout", "must be above 0 and at most 60 s");
        }
        Ok(())
    }
}

/// A peer the cluster follows.
#[derive(Clone, Copy, Debug)]
struct Followed {
    peer: PeerId,
    engine_id: u64,
    version: u64,
    lost: bool,
}

/// What the cluster counts (for tests and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Registrations made (the first, and one after each reconnection).
    pub registrations: u64,
    /// Times the metadata was published again (registration changes).
    pub republished: u64,
    /// Peers reloaded in place (they re-published).
    pub reloads: u64,
    /// Peers that restarted and were loaded again under a new id.
    pub restarts: u64,
    /// Peers declared lost (their lease expired).
    pub lost: u64,
    /// Values under the namespace that did not decode.
    pub malformed: u64,
    /// Times the connection to etcd was lost.
    pub disconnects: u64,
}

#[derive(Default)]
struct Counters {
    registrations: AtomicU64,
    republished: AtomicU64,
    reloads: AtomicU64,
    restarts: AtomicU64,
    lost: AtomicU64,
    malformed: AtomicU64,
    disconnects: AtomicU64,
}

/// What the cluster's thread and its callers share.
struct State {
    engine: Arc<Engine>,
    /// This engine's id (from its metadata): a key holding it is our own.
    engine_id: u64,
    config: EtcdConfig,
    name: String,
    key: String,
    followed: Mutex<HashMap<String, Followed>>,
    /// `None` while connected; why not, otherwise.
    down: Mutex<Option<String>>,
    stop: AtomicBool,
    counters: Counters,
}

impl State {
    fn endpoints(&self) -> String {
        self.config.endpoints.join(",")
    }

    fn store_error(&self, reason: impl std::fmt::Display) -> Error {
        Error::MetadataStore {
            endpoints: self.endpoints(),
            reason: reason.to_string(),
        }
    }

    fn followed(&self) -> std::sync::MutexGuard<'_, HashMap<String, Followed>> {
        self.followed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key_of(&self, name: &str) -> String {
        format!("{}/{name}", self.config.namespace)
    }

    /// Applies a value seen under a followed name: a reload in place, or a restart.
    fn apply(&self, name: &str, value: &[u8]) -> Result<PeerId> {
        let (version, blob, md) = match cluster_value::decode(value) {
            Ok(v) => v,
            Err(e) => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        if md.engine_name != name {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Metadata(MetadataError::Malformed {
                what: "the engine's name differs from its key in the metadata store",
            }));
        }
        let before = self.followed().get(name).copied();
        let peer = match before {
            Some(f) if f.engine_id == md.engine_id => {
                if f.version == version && !f.lost {
                    return Ok(f.peer);
                }
                let id = self.engine.load_peer(blob)?;
                self.counters.reloads.fetch_add(1, Ordering::Relaxed);
                id
            }
            Some(f) => {
                // A new incarnation: the old one's mappings are closed first, so no
                // transfer prepared from here on reaches its keys.
                let _ = self.engine.unload_peer(f.peer);
                let id = self.engine.load_peer(blob)?;
                self.counters.restarts.fetch_add(1, Ordering::Relaxed);
                id
            }
            None => self.engine.load_peer(blob)?,
        };
        self.followed().insert(
            name.to_owned(),
            Followed {
                peer,
                engine_id: md.engine_id,
                version,
                lost: false,
            },
        );
        Ok(peer)
    }

    /// A followed name's key went away (its lease expired, or it left).
    fn gone(&self, name: &str) {
        let mut followed = self.followed();
        if let Some(f) = followed.get_mut(name)
            && !f.lost
        {
            f.lost = true;
            let _ = self.engine.lose_peer(f.peer);
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A request from a caller to the cluster's thread (which owns the client).
enum Command {
    Get(String, mpsc::Sender<Result<Option<Vec<u8>>>>),
    List(mpsc::Sender<Result<Vec<String>>>),
    Stop,
}

/// An engine's membership of a cluster: its registration, the peers it follows,
/// and the thread that keeps them (see the module docs). Dropping it revokes the
/// registration.
pub struct Cluster {
    state: Arc<State>,
    commands: amp::UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl Cluster {
    /// Registers `engine` under its name (`Config::name`) in `config.namespace` and
    /// starts following the store. [`Error::NameTaken`] if another live engine has
    /// the name; [`Error::MetadataStore`] if etcd cannot be reached within
    /// `config.timeout`.
    pub fn join(engine: Arc<Engine>, config: EtcdConfig) -> Result<Cluster> {
        config.validate()?;
        let name = engine.config().name.clone();
        if name.is_empty() || name.contains('/') {
            return Err(Error::InvalidConfig {
                field: "name",
                reason: "an engine in a cluster needs a name without '/'",
            });
        }
        let key = format!("{}/{name}", config.namespace);
        let engine_id = Metadata::decode(&engine.local_metadata()?)?.engine_id;
        let wait = config.timeout * 3 + Duration::from_secs(1);
        let state = Arc::new(State {
            engine,
            engine_id,
            config,
            name,
            key,
            followed: Mutex::new(HashMap::new()),
            down: Mutex::new(None),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let (commands, inbox) = amp::unbounded_channel();
        let (ready_tx, ready) = mpsc::channel();
        let thread = {
            let state = Arc::clone(&state);
            std::thread::Builder::new()
                .name("ringxfer-etcd".into())
                .spawn(move || run(state, inbox, ready_tx))
                .map_err(|e| Error::io("starting the metadata store thread", &e))?
        };
        match ready.recv_timeout(wait) {
            Ok(Ok(())) => Ok(Cluster {
                state,
                commands,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                state.stop.store(true, Ordering::Release);
                let _ = commands.send(Command::Stop);
                let _ = thread.join();
                Err(state.store_error(format!("no answer within {wait:?}")))
            }
        }
    }

    /// The key this engine is registered under.
    pub fn key(&self) -> &str {
        &self.state.key
    }

    /// Whether the thread is connected to etcd now.
    pub fn connected(&self) -> bool {
        self.state.down.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    fn ask<T>(&self, make: impl FnOnce(mpsc::Sender<Result<T>>) -> Command) -> Result<T> {
        if let Some(why) = self.state.down.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(self.state.store_error(why));
        }
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(make(tx))
            .map_err(|_| self.state.store_error("the metadata store thread has stopped"))?;
        rx.recv_timeout(self.state.config.timeout * 2 + Duration::from_millis(500))
            .map_err(|_| self.state.store_error("no answer in time"))?
    }

    /// Loads the engine registered as `name` and follows it (restarts are reloaded,
    /// a departure makes it lost). A peer followed already is not fetched again:
    /// its current id is returned (as [`peer`](Cluster::peer)).
    pub fn fetch_peer(&self, name: &str) -> Result<PeerId> {
        if let Some(f) = self.state.followed().get(name)
            && !f.lost
        {
            return Ok(f.peer);
        }
        let key = self.state.key_of(name);
        match self.ask(|tx| Command::Get(key.clone(), tx))? {
            Some(value) => self.state.apply(name, &value),
            None => Err(Error::MetadataStore {
                endpoints: self.state.endpoints(),
                reason: format!("no engine is registered as {name:?} ({key})"),
            }),
        }
    }

    /// The current id of a followed peer, without asking the store: after a restart
    /// the new incarnation's. [`Error::PeerLost`] while it is lost,
    /// [`Error::UnknownPeer`] if it is not followed.
    pub fn peer(&self, name: &str) -> Result<PeerId> {
        match self.state.followed().get(name) {
            Some(f) if f.lost => Err(Error::PeerLost { peer: f.peer.0 }),
            Some(f) => Ok(f.peer),
            None => Err(Error::UnknownPeer { peer: u32::MAX }),
        }
    }

    /// Stops following `name` and unloads it (its transfers in flight end as they
    /// would have; see [`Engine::unload_peer`]). False if it was not followed.
    pub fn forget(&self, name: &str) -> bool {
        let Some(f) = self.state.followed().remove(name) else {
            return false;
        };
        let _ = self.state.engine.unload_peer(f.peer);
        true
    }

    /// The names registered in the namespace now (this engine's included).
    pub fn list_peers(&self) -> Result<Vec<String>> {
        self.ask(Command::List)
    }

    /// What the cluster has counted.
    pub fn stats(&self) -> ClusterStats {
        let c = &self.state.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClusterStats {
            registrations: l(&c.registrations),
            republished: l(&c.republished),
            reloads: l(&c.reloads),
            restarts: l(&c.restarts),
            lost: l(&c.lost),
            malformed: l(&c.malformed),
            disconnects: l(&c.disconnects),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("key", &self.state.key)
            .field("connected", &self.connected())
            .finish()
    }
}

/// The cluster's thread: sessions with etcd, reconnecting between them.
fn run(state: Arc<State>, mut inbox: amp::UnboundedReceiver<Command>, ready: mpsc::Sender<Result<()>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(Error::io("starting the metadata store runtime", &e)));
            return;
        }
    };
    runtime.block_on(async move {
        let mut ready = Some(ready);
        let mut first = true;
        while !state.stop.load(Ordering::Acquire) {
            let outcome = session(&state, &mut inbox, &mut ready, first).await;
            first = false;
            let why = match outcome {
                Ok(()) => return,
                // A first session that fails (the name taken, etcd unreachable) is
                // `join`'s error; later ones are outages, retried.
                Err(e) => match ready.take() {
                    Some(r) => {
                        let _ = r.send(Err(e));
                        return;
                    }
                    None => e.to_string(),
                },
            };
            state.counters.disconnects.fetch_add(1, Ordering::Relaxed);
            *state.down.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
            // Until the next try: callers get the error at once.
            let pause = tokio::time::sleep(Duration::from_millis(500));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = &mut pause => break,
                    cmd = inbox.recv() => match cmd {
                        None | Some(Command::Stop) => return,
                        Some(Command::Get(_, tx)) => { let _ = tx.send(Err(state.store_error(&why))); }
                        Some(Command::List(tx)) => { let _ = tx.send(Err(state.store_error(&why))); }
                    },
                }
            }
        }
    });
}

/// `op` within the configured timeout, as a store error.
async fn timed<T>(
    state: &State,
    what: &str,
    op: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(state.config.timeout, op).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(state.store_error(format!("{what}: {e}"))),
        Err(_) => Err(state.store_error(format!("{what}: no answer within {:?}", state.config.timeout))),
    }
}

/// One connection: register, then keep the lease, watch the namespace and serve
/// requests until something fails (an error) or the cluster is dropped (`Ok`).
async fn session(
    state: &State,
    inbox: &mut amp::UnboundedReceiver<Command>,
    ready: &mut Option<mpsc::Sender<Result<()>>>,
    first: bool,
) -> Result<()> {
    let options = ConnectOptions::new()
        .with_connect_timeout(state.config.timeout)
        .with_timeout(state.config.timeout)
        .with_keep_alive(Duration::from_secs(1), state.config.timeout);
    let mut client = timed(
        state,
        "connecting",
        Client::connect(&state.config.endpoints, Some(options)),
    )
    .await?;

    // Register: put the key under a new lease unless another engine holds it.
    let ttl = state.config.ttl.as_secs() as i64;
    let lease = timed(state, "granting a lease", client.lease_grant(ttl, None))
        .await?
        .id();
    let mut blob = state.engine.local_metadata()?;
    let mut version = 1u64;
    let put = || {
        TxnOp::put(
            state.key.as_str(),
            cluster_value::encode(version, &blob),
            Some(PutOptions::new().with_lease(lease)),
        )
    };
    let txn = Txn::new()
        .when([Compare::create_revision(state.key.as_str(), CompareOp::Equal, 0)])
        .and_then([put()])
        .or_else([TxnOp::get(state.key.as_str(), None)]);
    let resp = timed(state, "registering", client.txn(txn)).await?;
    if !resp.succeeded() {
        // The key exists: ours from before a lost connection (its lease not yet
        // expired) is taken over; anyone else's is a live engine with our name.
        let existing = resp.op_responses().into_iter().find_map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        let ours = existing
            .as_deref()
            .and_then(|v| cluster_value::decode(v).ok())
            .is_some_and(|(_, _, md)| md.engine_id == state.engine_id);
        if !ours {
            let _ = client.lease_revoke(lease).await;
            return Err(Error::NameTaken {
                name: state.name.clone(),
                key: state.key.clone(),
            });
        }
        let opts = PutOptions::new().with_lease(lease);
        timed(
            state,
            "registering",
            client.put(state.key.as_str(), cluster_value::encode(version, &blob), Some(opts)),
        )
        .await?;
    }
    state.counters.registrations.fetch_add(1, Ordering::Relaxed);
    let revision = resp.header().map_or(0, |h| h.revision());
    let (mut keeper, mut kept) = timed(state, "keeping the lease", client.lease_keep_alive(lease)).await?;
    let watch_options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let prefix = format!("{}/", state.config.namespace);
    let mut watch = timed(state, "watching", client.watch(prefix.as_str(), Some(watch_options))).await?;
    *state.down.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if let Some(r) = ready.take() {
        let _ = r.send(Ok(()));
    }
    if !first {
        // Back after an outage: what changed meanwhile is not in the watch.
        let names: Vec<String> = state.followed().keys().cloned().collect();
        for name in names {
            let got = timed(state, "re-reading a peer", client.get(state.key_of(&name), None)).await?;
            match got.kvs().first() {
                Some(kv) => {
                    let _ = state.apply(&name, kv.value());
                }
                None => state.gone(&name),
            }
        }
    }

    let mut keepalive = tokio::time::interval((state.config.ttl / 3).max(Duration::from_millis(300)));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = keepalive.tick() => {
                timed(state, "keeping the lease", keeper.keep_alive()).await?;
            }
            msg = kept.message() => match msg {
                Ok(Some(r)) if r.ttl() > 0 => {}
                Ok(Some(_)) => return Err(state.store_error("the lease expired")),
                Ok(None) => return Err(state.store_error("the lease keep-alive stream ended")),
                Err(e) => return Err(state.store_error(format!("keeping the lease: {e}"))),
            },
            msg = watch.message() => match msg {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        return Err(state.store_error(format!("the watch was cancelled: {}", resp.cancel_reason())));
                    }
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        let Some(name) = kv.key().strip_prefix(prefix.as_bytes()) else { continue };
                        let Ok(name) = std::str::from_utf8(name) else { continue };
                        if !state.followed().contains_key(name) {
                            continue;
                        }
                        match event.event_type() {
                            EventType::Put => {
                                let _ = state.apply(name, kv.value());
                            }
                            EventType::Delete => state.gone(name),
                        }
                    }
                }
                Ok(None) => return Err(state.store_error("the watch stream ended")),
                Err(e) => return Err(state.store_error(format!("watching: {e}"))),
            },
            cmd = inbox.recv() => match cmd {
                None | Some(Command::Stop) => {
                    // Leave: the key goes with the lease.
                    let _ = tokio::time::timeout(state.config.timeout, client.lease_revoke(lease)).await;
                    return Ok(());
                }
                Some(Command::Get(key, tx)) => {
                    let got = timed(state, "reading", client.get(key, None)).await;
                    let _ = tx.send(got.map(|g| g.kvs().first().map(|kv| kv.value().to_vec())));
                }
                Some(Command::List(tx)) => {
                    let opts = GetOptions::new().with_prefix().with_keys_only();
                    let got = timed(state, "listing", client.get(prefix.as_str(), Some(opts))).await;
                    let _ = tx.send(got.map(|g| {
                        g.kvs()
                            .iter()
                            .filter_map(|kv| kv.key().strip_prefix(prefix.as_bytes()))
                            .filter_map(|n| std::str::from_utf8(n).ok().map(str::to_owned))
                            .collect()
                    }));
                }
            },
            _ = tick.tick() => {
                if state.stop.load(Ordering::Acquire) {
                    let _ = tokio::time::timeout(state.config.timeout, client.lease_revoke(lease)).await;
                    return Ok(());
                }
                // Registrations changed: publish the new metadata, a new version.
                let now = state.engine.local_metadata()?;
                if now != blob {
                    blob = now;
                    version += 1;
                    let opts = PutOptions::new().with_lease(lease);
                    timed(state, "re-publishing", client.put(state.key.as_str(), cluster_value::encode(version, &blob), Some(opts))).await?;
                    state.counters.republished.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
