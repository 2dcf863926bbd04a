//! mctld's D-Bus service: a dispatcher over the connection's message stream.
//!
//! zbus's stock `ObjectServer` cannot serve machinectl: its `Properties.GetAll` takes a typed
//! interface name and rejects the empty one machinectl sends (meaning "all interfaces"), and it
//! returns properties in hash order where machinectl prints them in reply order. So mctld routes
//! calls itself: a thin adapter from messages to [`Manager`] calls, with machined's error names.
//!
//! Every caller may send anything (the bus policy lets anyone look): calls are admitted within
//! [`Limits`] before any work, and blocking work runs in the manager's bounded
//! [`BlockingPool`], in the caller's class, so that no unprivileged caller can exhaust memory,
//! threads or the workers, or delay root.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use serde::ser::SerializeMap;
use zbus::message::{Header, Type as MsgType};
use zbus::{Connection, Message, OwnedObjectPath, OwnedVariant, Variant};

use crate::images::store::ImageInfo;
use crate::manager::pool::{BlockingPool, Class};
use crate::manager::resources::MachineResources;
use crate::manager::{Caller, Event, Machine, Manager, ManagerError};

use super::calls::{BindCall, CopyCall, DecodeError, ImageOp, MachineCall, ManagerCall, SessionCall};
use super::introspect::{self, IMAGE, Interface, MACHINE, MACHINE_RESOURCES, MANAGER, MCTL_MANAGER};
use super::limits::{Admission, Limits, Ticket};
use super::paths::{self, IMAGE_DIR, MACHINE_DIR, MANAGER_PATH};
use super::proxy::MachineDetails;

/// Properties in a fixed order, serialized as `a{sv}` (a HashMap would scramble the order
/// machinectl prints them in).
struct Props(Vec<(&'static str, OwnedVariant)>);

impl Serialize for Props {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl zbus::Type for Props {
    const SIGNATURE: &'static zbus::Signature = <HashMap<String, OwnedVariant> as zbus::Type>::SIGNATURE;
}

/// A failed call: D-Bus error name and message.
#[derive(Debug)]
struct CallError(&'static str, String);

impl CallError {
    fn invalid_args(msg: impl Into<String>) -> Self {
        CallError("org.freedesktop.DBus.Error.InvalidArgs", msg.into())
    }

    /// A message body that does not decode as the method's arguments: the caller's error.
    fn bad_body(e: zbus::Error) -> Self {
        CallError::invalid_args(format!("Invalid arguments: {e}"))
    }
}

impl From<ManagerError> for CallError {
    fn from(e: ManagerError) -> Self {
        let name = match &e {
            ManagerError::NoSuchMachine(_) => "org.freedesktop.machine1.NoSuchMachine",
            ManagerError::NoSuchImage(_) => "org.freedesktop.machine1.NoSuchImage",
            ManagerError::MachineExists(_) => "org.freedesktop.machine1.MachineExists",
            ManagerError::NoMachineForPid(_) => "org.freedesktop.machine1.NoMachineForPID",
            ManagerError::NoPrivateNetworking(_) => "org.freedesktop.machine1.NoPrivateNetworking",
            ManagerError::InvalidArgs(_) => "org.freedesktop.DBus.Error.InvalidArgs",
            ManagerError::AccessDenied(_) => "org.freedesktop.DBus.Error.AccessDenied",
            ManagerError::LimitsExceeded(_) => "org.freedesktop.DBus.Error.LimitsExceeded",
            ManagerError::TimedOut(_) => "org.freedesktop.DBus.Error.TimedOut",
            ManagerError::NotSupported(_) => "org.freedesktop.DBus.Error.NotSupported",
            ManagerError::Failed(_) => "org.freedesktop.DBus.Error.Failed",
        };
        CallError(name, e.to_string())
    }
}

impl From<zbus::Error> for CallError {
    /// A failure of ours (a broken connection, a failed reply), never the caller's argument:
    /// bodies that do not decode go through [`CallError::bad_body`].
    fn from(e: zbus::Error) -> Self {
        CallError("org.freedesktop.DBus.Error.Failed", format!("Failed: {e}"))
    }
}

type Reply = Result<(), CallError>;

/// A row of `ListMachineUsage` (see [`crate::bus::proxy::UsageRow`]).
type UsageRow = crate::bus::proxy::UsageRow;

fn ov<'a>(v: impl Into<Variant<'a>>) -> OwnedVariant {
    OwnedVariant::try_from(v.into()).expect("plain values have no fds")
}

fn machine_props(m: &Machine) -> Props {
    Props(vec![
        ("Name", ov(m.name.as_str())),
        ("Id", ov(m.id.map(|i| i.to_vec()).unwrap_or_default())),
        ("Timestamp", ov(m.timestamp)),
        ("TimestampMonotonic", ov(m.timestamp_monotonic)),
        ("Service", ov(m.service.as_str())),
        ("Unit", ov(m.unit.as_str())),
        ("Leader", ov(m.leader)),
        ("Class", ov(m.class.as_str())),
        ("RootDirectory", ov(m.root_directory.as_str())),
        ("NetworkInterfaces", ov(m.netif.clone())),
        ("State", ov(m.state.as_str())),
    ])
}

fn resource_props(r: &MachineResources) -> Props {
    let (u, l) = (&r.usage, &r.limits);
    let known = |v: Option<u64>| ov(v.unwrap_or(u64::MAX));
    Props(vec![
        ("CPUUsageNSec", known(u.cpu_usage_ns)),
        ("MemoryCurrent", known(u.memory_current)),
        ("MemoryPeak", known(u.memory_peak)),
        ("TasksCurrent", known(u.tasks_current)),
        ("IOReadBytes", known(u.io_read_bytes)),
        ("IOWriteBytes", known(u.io_write_bytes)),
        ("IPIngressBytes", known(r.ip_ingress_bytes)),
        ("IPEgressBytes", known(r.ip_egress_bytes)),
        ("OOMKills", known(u.oom_kills)),
        ("MemoryMax", ov(l.memory_max)),
        ("MemoryHigh", ov(l.memory_high)),
        ("MemorySwapMax", ov(l.memory_swap_max)),
        ("TasksMax", ov(l.tasks_max)),
        ("CPUWeight", ov(l.cpu_weight)),
        ("CPUQuotaPerSecUSec", ov(l.cpu_quota_per_sec_usec)),
        ("AllowedCPUs", ov(l.allowed_cpus.as_str())),
        ("IOWeight", ov(l.io_weight)),
    ])
}

fn image_props(i: &ImageInfo) -> Props {
    let unknown = u64::MAX;
    Props(vec![
        ("Name", ov(i.name.as_str())),
        ("Path", ov(i.path.to_string_lossy().as_ref())),
        ("Type", ov(i.image_type.as_str())),
        ("ReadOnly", ov(i.read_only)),
        ("CreationTimestamp", ov(i.created_us.unwrap_or(0))),
        ("ModificationTimestamp", ov(i.modified_us.unwrap_or(0))),
        ("Usage", ov(i.usage.unwrap_or(unknown))),
        ("Limit", ov(unknown)),
        ("UsageExclusive", ov(i.usage.unwrap_or(unknown))),
        ("LimitExclusive", ov(unknown)),
    ])
}

/// `ListImages`'s entry: name, type, read-only, created, modified, usage, path.
type ImageEntry = (String, String, bool, u64, u64, u64, OwnedObjectPath);

fn image_entry(i: &ImageInfo) -> ImageEntry {
    (
        i.name.clone(),
        i.image_type.as_str().to_owned(),
        i.read_only,
        i.created_us.unwrap_or(0),
        i.modified_us.unwrap_or(0),
        i.usage.unwrap_or(u64::MAX),
        opath(paths::image_path(&i.name)),
    )
}

fn manager_props(mgr: &Manager) -> Props {
    Props(vec![
        ("PoolPath", ov(mgr.pool_path().to_string_lossy().as_ref())),
        ("PoolUsage", ov(u64::MAX)),
        ("PoolLimit", ov(u64::MAX)),
    ])
}

fn opath(s: String) -> OwnedObjectPath {
    OwnedObjectPath::try_from(s).expect("escaped labels are valid object path elements")
}

/// What lives at an object path.
enum Object {
    /// An inner node with children only (`/`, `/org`, ...).
    Node(Vec<String>),
    /// The manager.
    Manager,
    /// A machine.
    Machine(Machine),
    /// An image.
    Image(ImageInfo),
}

/// How long reading a guest's or an image's files may take (they are small; a read that takes
/// longer is stuck on something the guest controls).
const GUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Refusals (of oversized calls, of calls beyond a connection's limit) waiting to be sent.
const MAX_PENDING_REFUSALS: usize = 1024;

/// Sends refusals in batches (few writes however many there are), apart from the dispatcher.
async fn send_refusals(conn: Connection, mut pending: tokio::sync::mpsc::Receiver<Message>) {
    let mut batch = Vec::new();
    while pending.recv_many(&mut batch, 256).await > 0 {
        let _ = conn.send_all(&batch).await;
        batch.clear();
    }
}

/// How long one request for a caller's credentials may take, and how often it is made.
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(1);
const CREDENTIALS_ATTEMPTS: u32 = 4;
/// How long gathering every machine's OS and addresses may take.
const OVERVIEW_TIMEOUT: Duration = Duration::from_secs(15);

/// How long opening a session or a bind mount may take (the helper reads guest files).
const SESSION_TIMEOUT: Duration = Duration::from_secs(40);

/// machine1's copy flag: replace an existing destination.
const COPY_REPLACE: u64 = 1;

/// The service: a connection serving the manager.
#[derive(Clone)]
pub struct Service {
    conn: Connection,
    mgr: Arc<Manager>,
    admission: Arc<Admission>,
    pool: Arc<BlockingPool>,
    known: Arc<KnownCallers>,
}

/// Callers the bus daemon has identified, by unique connection name: the daemon records a
/// connection's uid and pid when it connects and never reuses a unique name while it runs,
/// so the answer holds for the connection's life (and for this `Service`'s connection to that
/// daemon). Saves a launcher's registration a second round trip through the daemon. Bounded:
/// when full it starts over.
#[derive(Debug, Default)]
struct KnownCallers(std::sync::Mutex<std::collections::HashMap<String, Caller>>);

impl KnownCallers {
    const MOST: usize = 4096;

    fn get(&self, sender: &str) -> Option<Caller> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(sender).copied()
    }

    fn insert(&self, sender: &str, caller: Caller) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= Self::MOST {
            map.clear();
        }
        map.insert(sender.to_owned(), caller);
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl Service {
    /// Wraps a connection (already on the bus, names not yet requested); blocking work runs in
    /// `pool`, calls are admitted within `limits`.
    pub fn new(conn: Connection, mgr: Arc<Manager>, pool: Arc<BlockingPool>, limits: Limits) -> Self {
        Self { conn, mgr, admission: Admission::new(limits), pool, known: Arc::default() }
    }

    /// Serves calls and emits signals until the connection closes. `stream` must be created
    /// before the bus names are requested, so that no early call is missed, and `events`
    /// (the manager's) before anything is registered or re-adopted, so that no early event is.
    pub async fn run(
        &self,
        mut stream: zbus::MessageStream,
        events: tokio::sync::broadcast::Receiver<crate::manager::Event>,
    ) {
        let signals = {
            let me = self.clone();
            let mut rx = events;
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(ev) => me.emit(ev).await,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    }
                }
            })
        };
        let (refusals, pending) = tokio::sync::mpsc::channel(MAX_PENDING_REFUSALS);
        let refuser = tokio::spawn(send_refusals(self.conn.clone(), pending));
        while let Some(msg) = stream.next().await {
            let Ok(msg) = msg else { continue };
            if msg.message_type() != MsgType::MethodCall {
                continue;
            }
            // Admission happens here, before anything else is held for the call. This loop
            // never waits for the bus: replies to mctld's own calls arrive through the queue it
            // drains, and while it does not drain it, mctld's queue in the bus daemon fills and
            // the daemon turns away everybody's calls to mctld, root's included.
            let hdr = msg.header();
            let sender = hdr.sender().map(|s| s.as_str().to_owned()).unwrap_or_default();
            match self.admission.admit(&sender, msg.data().len()) {
                Ok(ticket) => {
                    let me = self.clone();
                    drop(hdr);
                    tokio::spawn(async move { me.handle(msg, ticket).await });
                }
                Err(refusal) => {
                    let mut reply = zbus::Message::error(&hdr, refusal.error_name());
                    if let Some(me) = self.conn.unique_name() {
                        reply = reply.sender(me.as_ref());
                    }
                    // With too many refusals unsent, the flooding caller gets none: its call
                    // times out in the bus daemon instead.
                    if let Ok(reply) = reply.build(&(refusal.message(),)) {
                        let _ = refusals.try_send(reply);
                    }
                }
            }
        }
        refuser.abort();
        signals.abort();
    }

    async fn emit(&self, ev: Event) {
        let (member, name) = match ev {
            Event::New(n) => ("MachineNew", n),
            Event::Removed(n) => ("MachineRemoved", n),
        };
        let path = opath(paths::machine_path(&name));
        let _ = self
            .conn
            .emit_signal(None::<&str>, MANAGER_PATH, MANAGER.name, member, &(name.as_str(), &path))
            .await;
    }

    /// Serves one admitted call; its place in flight is given back when this ends.
    async fn handle(&self, msg: Message, _ticket: Ticket) {
        let hdr = msg.header();
        let result = self.dispatch(&msg, &hdr).await;
        if let Err(CallError(name, text)) = result {
            let _ = self.conn.reply_error(&hdr, name, &text).await;
        }
    }

    /// Runs `work` in the blocking pool, in the caller's class, giving up after `limit`.
    async fn blocking<T, F>(&self, hdr: &Header<'_>, limit: Option<Duration>, work: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: FnOnce(&Manager, &Caller) -> Result<T, ManagerError> + Send + 'static,
    {
        let caller = self.caller(hdr).await?;
        let class = if caller.is_privileged() { Class::Privileged } else { Class::Unprivileged };
        let mgr = self.mgr.clone();
        let result =
            self.pool.run(class, limit, move || work(&mgr, &caller)).await.map_err(ManagerError::from)?;
        Ok(result?)
    }

    fn resolve(&self, path: &str, caller_pid: impl FnOnce() -> Option<u32>) -> Option<Object> {
        match path {
            "/" => Some(Object::Node(vec!["org".into()])),
            "/org" => Some(Object::Node(vec!["freedesktop".into()])),
            "/org/freedesktop" => Some(Object::Node(vec!["machine1".into()])),
            MANAGER_PATH => Some(Object::Manager),
            MACHINE_DIR => {
                Some(Object::Node(self.mgr.list_with_host().iter().map(|m| paths::escape(&m.name)).collect()))
            }
            IMAGE_DIR => Some(Object::Node(
                self.mgr.list_images().unwrap_or_default().iter().map(|i| paths::escape(&i.name)).collect(),
            )),
            p if p.starts_with(&format!("{IMAGE_DIR}/")) => {
                let label = &p[IMAGE_DIR.len() + 1..];
                if label.contains('/') {
                    return None;
                }
                self.mgr.get_image(&paths::unescape(label)).ok().map(Object::Image)
            }
            p => {
                let label = p.strip_prefix(MACHINE_DIR)?.strip_prefix('/')?;
                if label.contains('/') {
                    return None;
                }
                let m = if label == "self" {
                    self.mgr.by_pid(caller_pid()?).ok()
                } else {
                    self.mgr.get(&paths::unescape(label)).ok()
                };
                m.map(Object::Machine)
            }
        }
    }

    /// The caller's connection as the bus daemon knows it (uid and pid recorded when it
    /// connected), asked once per connection.
    async fn caller(&self, hdr: &Header<'_>) -> Result<Caller, CallError> {
        let sender = hdr.sender().ok_or_else(|| CallError::invalid_args("message without sender"))?;
        if let Some(c) = self.known.get(sender.as_str()) {
            return Ok(c);
        }
        let dbus = zbus::fdo::DBusProxy::builder(&self.conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        let denied = |e: String| {
            CallError("org.freedesktop.DBus.Error.AccessDenied", format!("cannot identify caller: {e}"))
        };
        // The bus daemon drops its reply when mctld's queue there is full (a flood of large
        // calls): ask again rather than wait forever.
        let mut attempt = 0;
        let creds = loop {
            attempt += 1;
            match tokio::time::timeout(
                CREDENTIALS_TIMEOUT,
                dbus.get_connection_credentials(sender.clone().into()),
            )
            .await
            {
                Ok(Ok(creds)) => break creds,
                Ok(Err(e)) => return Err(denied(e.to_string())),
                Err(_) if attempt < CREDENTIALS_ATTEMPTS => continue,
                Err(_) => return Err(denied("the bus did not answer".into())),
            }
        };
        match (creds.unix_user_id(), creds.process_id()) {
            (Some(uid), Some(pid)) => {
                let c = Caller { uid, pid };
                self.known.insert(sender.as_str(), c);
                Ok(c)
            }
            _ => Err(CallError("org.freedesktop.DBus.Error.AccessDenied", "cannot identify caller".into())),
        }
    }

    async fn dispatch(&self, msg: &Message, hdr: &Header<'_>) -> Reply {
        let path = hdr.path().map(|p| p.as_str().to_owned()).unwrap_or_default();
        let iface = hdr.interface().map(|i| i.as_str().to_owned());
        let member = hdr.member().map(|m| m.as_str().to_owned()).unwrap_or_default();
        // Caller identity is looked up only for `self`, which needs the pid.
        let self_pid =
            if path.ends_with("/machine/self") { self.caller(hdr).await.ok().map(|c| c.pid) } else { None };
        let Some(obj) = self.resolve(&path, || self_pid) else {
            return Err(CallError(
                "org.freedesktop.DBus.Error.UnknownObject",
                format!("Unknown object '{path}'."),
            ));
        };
        let ifaces: &[&Interface] = match obj {
            Object::Node(_) => &[],
            Object::Manager => &[&MANAGER, &MCTL_MANAGER],
            Object::Machine(_) => &[&MACHINE, &MACHINE_RESOURCES],
            Object::Image(_) => &[&IMAGE],
        };
        match (iface.as_deref(), member.as_str()) {
            (Some("org.freedesktop.DBus.Introspectable") | None, "Introspect") => {
                let children = match &obj {
                    Object::Node(c) => c.clone(),
                    Object::Manager => vec!["image".into(), "machine".into()],
                    Object::Machine(_) | Object::Image(_) => Vec::new(),
                };
                return self.reply(hdr, &introspect::node_xml(ifaces, &children)).await;
            }
            (Some("org.freedesktop.DBus.Peer") | None, "Ping") => return self.reply(hdr, &()).await,
            (Some("org.freedesktop.DBus.Peer") | None, "GetMachineId") => {
                let id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
                return self.reply(hdr, &id.trim()).await;
            }
            (Some("org.freedesktop.DBus.Properties"), "Get" | "GetAll" | "Set") => {
                return self.properties(msg, hdr, &obj, ifaces, &member).await;
            }
            _ => {}
        }
        let owner = match iface.as_deref() {
            Some(i) => ifaces.iter().find(|x| x.name == i).copied(),
            None => ifaces.iter().find(|x| x.methods.iter().any(|m| m.name == member)).copied(),
        };
        let unknown = || {
            CallError(
                "org.freedesktop.DBus.Error.UnknownMethod",
                format!("Unknown method {member} or interface {}.", iface.as_deref().unwrap_or("")),
            )
        };
        match (owner.map(|i| i.name), obj) {
            (Some(n), Object::Manager) if n == MANAGER.name => self.manager_call(msg, hdr, &member).await,
            (Some(n), Object::Manager) if n == MCTL_MANAGER.name => self.mctl_call(msg, hdr, &member).await,
            (Some(n), Object::Machine(m)) if n == MACHINE.name => {
                self.machine_call(msg, hdr, &member, &m.name).await
            }
            (Some(n), Object::Image(i)) if n == IMAGE.name => {
                self.image_call(msg, hdr, &member, &i.name).await
            }
            _ => Err(unknown()),
        }
    }

    async fn reply<B: Serialize + zbus::DynamicType>(&self, hdr: &Header<'_>, body: &B) -> Reply {
        self.conn
            .reply(hdr, body)
            .await
            .map_err(|e| CallError("org.freedesktop.DBus.Error.Failed", e.to_string()))
    }

    async fn properties(
        &self,
        msg: &Message,
        hdr: &Header<'_>,
        obj: &Object,
        ifaces: &[&Interface],
        member: &str,
    ) -> Reply {
        let all_props = |name: &str| -> Option<Props> {
            match obj {
                Object::Manager if name == MANAGER.name => Some(manager_props(&self.mgr)),
                Object::Machine(m) if name == MACHINE.name => Some(machine_props(m)),
                Object::Machine(m) if name == MACHINE_RESOURCES.name => {
                    Some(resource_props(&self.mgr.resources(m)))
                }
                Object::Image(i) if name == IMAGE.name => Some(image_props(i)),
                _ => ifaces.iter().any(|i| i.name == name).then(|| Props(Vec::new())),
            }
        };
        match member {
            "GetAll" => {
                let (iface,): (String,) = msg.body().deserialize().map_err(CallError::bad_body)?;
                if iface.is_empty() {
                    // sd-bus semantics: every interface of the object, in order; but not the
                    // resource figures, so that machinectl shows exactly machined's keys.
                    let mut out = Vec::new();
                    for i in ifaces.iter().filter(|i| i.name != MACHINE_RESOURCES.name) {
                        out.extend(all_props(i.name).map(|p| p.0).unwrap_or_default());
                    }
                    return self.reply(hdr, &Props(out)).await;
                }
                match all_props(&iface) {
                    Some(p) => self.reply(hdr, &p).await,
                    None => Err(CallError(
                        "org.freedesktop.DBus.Error.UnknownInterface",
                        format!("Unknown interface '{iface}'."),
                    )),
                }
            }
            "Get" => {
                let (iface, prop): (String, String) =
                    msg.body().deserialize().map_err(CallError::bad_body)?;
                let props = all_props(&iface).ok_or_else(|| {
                    CallError(
                        "org.freedesktop.DBus.Error.UnknownInterface",
                        format!("Unknown interface '{iface}'."),
                    )
                })?;
                let value =
                    props.0.into_iter().find(|(k, _)| *k == prop).map(|(_, v)| v).ok_or_else(|| {
                        CallError(
                            "org.freedesktop.DBus.Error.UnknownProperty",
                            format!("Unknown property '{prop}'."),
                        )
                    })?;
                self.reply(hdr, &value).await
            }
            _ => {
                Err(CallError("org.freedesktop.DBus.Error.PropertyReadOnly", "Property is read-only.".into()))
            }
        }
    }

    async fn manager_call(&self, msg: &Message, hdr: &Header<'_>, member: &str) -> Reply {
        let mgr = &self.mgr;
        let call = match ManagerCall::decode(member, &msg.body()) {
            Ok(c) => c,
            Err(DecodeError::BadBody(e)) => return Err(CallError::bad_body(e)),
            Err(DecodeError::UnknownMethod) => {
                return Err(CallError(
                    "org.freedesktop.DBus.Error.UnknownMethod",
                    format!("Unknown method {member}."),
                ));
            }
        };
        match call {
            ManagerCall::ListMachines => {
                let list: Vec<(String, String, String, OwnedObjectPath)> = mgr
                    .list_with_host()
                    .into_iter()
                    .map(|m| {
                        let p = opath(paths::machine_path(&m.name));
                        (m.name, m.class.as_str().to_owned(), m.service, p)
                    })
                    .collect();
                self.reply(hdr, &list).await
            }
            ManagerCall::GetMachine(name) => {
                let m = mgr.get(&name)?;
                self.reply(hdr, &opath(paths::machine_path(&m.name))).await
            }
            ManagerCall::GetMachineByPid(pid) => {
                let pid = if pid == 0 { self.caller(hdr).await?.pid } else { pid };
                let m = mgr.by_pid(pid)?;
                self.reply(hdr, &opath(paths::machine_path(&m.name))).await
            }
            ManagerCall::ListImages => {
                let list: Vec<ImageEntry> = mgr.list_images()?.iter().map(image_entry).collect();
                self.reply(hdr, &list).await
            }
            ManagerCall::GetImage(name) => {
                let i = mgr.get_image(&name)?;
                self.reply(hdr, &opath(paths::image_path(&i.name))).await
            }
            ManagerCall::GetImageOsRelease(name) => self.image_os_release(hdr, name).await,
            ManagerCall::Image(name, op) => self.image_op(hdr, name, op).await,
            ManagerCall::Register(req) => {
                let caller = self.caller(hdr).await?;
                let m = mgr.register(req, &caller)?;
                tracing::info!(machine = %m.name, leader = m.leader, "machine registered");
                self.reply(hdr, &opath(paths::machine_path(&m.name))).await
            }
            ManagerCall::Unregister(name) => {
                mgr.unregister(&name, &self.caller(hdr).await?)?;
                self.reply(hdr, &()).await
            }
            ManagerCall::Terminate(name) => {
                mgr.terminate(&name, &self.caller(hdr).await?)?;
                self.reply(hdr, &()).await
            }
            ManagerCall::Kill { name, who, signal } => {
                mgr.kill(&name, &who, signal, &self.caller(hdr).await?)?;
                self.reply(hdr, &()).await
            }
            ManagerCall::Addresses(name) => self.addresses(hdr, name).await,
            ManagerCall::OsRelease(name) => self.os_release(hdr, name).await,
            ManagerCall::UidShift(name) => self.reply(hdr, &mgr.uid_shift(&name)?).await,
            ManagerCall::Open(name, what) => self.open_session(hdr, name, what).await,
            ManagerCall::Copy(name, copy) => self.copy(hdr, name, copy).await,
            ManagerCall::Bind(name, bind) => self.bind(hdr, name, bind).await,
            ManagerCall::OpenRoot(name) => self.open_root(hdr, name).await,
        }
    }

    /// A terminal, login or shell in a machine: the reply carries the pty master.
    async fn open_session(&self, hdr: &Header<'_>, name: String, what: SessionCall) -> Reply {
        let opened = self
            .blocking(hdr, Some(SESSION_TIMEOUT), move |mgr, caller| match what {
                SessionCall::Pty => mgr.open_pty(&name, caller),
                SessionCall::Login => mgr.open_login(&name, caller),
                SessionCall::Shell(req) => mgr.open_shell(&name, req, caller),
            })
            .await?;
        let master = zbus::OwnedFd::from(opened.master);
        self.reply(hdr, &(master, opened.pty_path)).await
    }

    /// The machine's root directory: the reply carries it as an fd.
    async fn open_root(&self, hdr: &Header<'_>, name: String) -> Reply {
        let root = self
            .blocking(hdr, Some(GUEST_READ_TIMEOUT), move |mgr, caller| {
                mgr.open_root_directory(&name, caller)
            })
            .await?;
        self.reply(hdr, &(zbus::OwnedFd::from(root),)).await
    }

    /// A copy between the host and a machine (whole trees; no time limit).
    async fn copy(&self, hdr: &Header<'_>, name: String, copy: CopyCall) -> Reply {
        self.blocking(hdr, None, move |mgr, caller| {
            let req = crate::manager::files::CopyRequest {
                source: copy.source,
                destination: copy.destination,
                replace: copy.flags & COPY_REPLACE != 0,
                unknown_flags: copy.flags & !COPY_REPLACE,
            };
            if copy.to_machine { mgr.copy_to(&name, req, caller) } else { mgr.copy_from(&name, req, caller) }
        })
        .await?;
        self.reply(hdr, &()).await
    }

    /// A bind mount of a host directory or file into a running machine.
    async fn bind(&self, hdr: &Header<'_>, name: String, bind: BindCall) -> Reply {
        self.blocking(hdr, Some(SESSION_TIMEOUT), move |mgr, caller| {
            let req = crate::manager::files::BindRequest {
                source: bind.source,
                destination: bind.destination,
                read_only: bind.read_only,
                mkdir: bind.mkdir,
            };
            mgr.bind_mount(&name, req, caller)
        })
        .await?;
        self.reply(hdr, &()).await
    }

    async fn image_call(&self, msg: &Message, hdr: &Header<'_>, member: &str, name: &str) -> Reply {
        let body = msg.body();
        let op = match member {
            "Remove" => ImageOp::Remove,
            "Rename" => ImageOp::Rename(body.deserialize::<(String,)>().map_err(CallError::bad_body)?.0),
            "Clone" => {
                let (to, ro): (String, bool) = body.deserialize().map_err(CallError::bad_body)?;
                ImageOp::Clone(to, ro)
            }
            "MarkReadOnly" => {
                ImageOp::ReadOnly(body.deserialize::<(bool,)>().map_err(CallError::bad_body)?.0)
            }
            "GetOSRelease" => return self.image_os_release(hdr, name.to_owned()).await,
            _ => {
                return Err(CallError(
                    "org.freedesktop.DBus.Error.UnknownMethod",
                    format!("Unknown method {member}."),
                ));
            }
        };
        self.image_op(hdr, name.to_owned(), op).await
    }

    /// Runs an image change off the async runtime (a clone copies a whole tree: no time limit).
    async fn image_op(&self, hdr: &Header<'_>, name: String, op: ImageOp) -> Reply {
        self.blocking(hdr, None, move |mgr, caller| match op {
            ImageOp::Remove => mgr.remove_image(&name, caller),
            ImageOp::Rename(to) => mgr.rename_image(&name, &to, caller),
            ImageOp::Clone(to, ro) => mgr.clone_image(&name, &to, ro, caller),
            ImageOp::ReadOnly(ro) => mgr.mark_image_read_only(&name, ro, caller),
        })
        .await?;
        self.reply(hdr, &()).await
    }

    /// A machine's os-release: a file the guest controls.
    async fn os_release(&self, hdr: &Header<'_>, name: String) -> Reply {
        let fields: HashMap<String, String> = self
            .blocking(hdr, Some(GUEST_READ_TIMEOUT), move |mgr, _| mgr.os_release(&name))
            .await?
            .into_iter()
            .collect();
        self.reply(hdr, &fields).await
    }

    /// An image's os-release: a file whatever ran in the image may have changed.
    async fn image_os_release(&self, hdr: &Header<'_>, name: String) -> Reply {
        let fields: HashMap<String, String> = self
            .blocking(hdr, Some(GUEST_READ_TIMEOUT), move |mgr, _| mgr.image_os_release(&name))
            .await?
            .into_iter()
            .collect();
        self.reply(hdr, &fields).await
    }

    /// A machine's addresses, read from a thread that joins its network namespace.
    async fn addresses(&self, hdr: &Header<'_>, name: String) -> Reply {
        let addresses =
            self.blocking(hdr, Some(GUEST_READ_TIMEOUT), move |mgr, _| mgr.addresses(&name)).await?;
        self.reply(hdr, &addresses).await
    }

    async fn mctl_call(&self, msg: &Message, hdr: &Header<'_>, member: &str) -> Reply {
        match member {
            "GetMachineControlGroup" => {
                let (name,): (String,) = msg.body().deserialize().map_err(CallError::bad_body)?;
                self.reply(hdr, &self.mgr.control_group(&name)?).await
            }
            "FreezeMachine" | "ThawMachine" => {
                let (name,): (String,) = msg.body().deserialize().map_err(CallError::bad_body)?;
                let frozen = member == "FreezeMachine";
                // Waiting for the freezer blocks (with a deadline of its own).
                self.blocking(hdr, None, move |mgr, caller| mgr.freeze(&name, frozen, caller)).await?;
                self.reply(hdr, &()).await
            }
            "IsMachineFrozen" => {
                let (name,): (String,) = msg.body().deserialize().map_err(CallError::bad_body)?;
                let m = self.mgr.get(&name)?;
                self.reply(hdr, &self.mgr.is_frozen(&m)).await
            }
            "ListMachinesDetailed" => {
                // Reads every machine's os-release and joins network namespaces: blocking work.
                let rows: Vec<MachineDetails> = self
                    .blocking(hdr, Some(OVERVIEW_TIMEOUT), |mgr, _| Ok(mgr.overview()))
                    .await?
                    .into_iter()
                    .map(|o| (o.name, o.class, o.service, o.os_id, o.version_id, o.addresses))
                    .collect();
                self.reply(hdr, &rows).await
            }
            "SetMachineProperties" => {
                let (name, runtime, assignments): (String, bool, Vec<String>) =
                    msg.body().deserialize().map_err(CallError::bad_body)?;
                // Lowering memory.max reclaims before the write returns: blocking work.
                self.blocking(hdr, None, move |mgr, caller| {
                    mgr.set_properties(&name, runtime, &assignments, caller)
                })
                .await?;
                self.reply(hdr, &()).await
            }
            "ListMachineUsage" => {
                let rows: Vec<UsageRow> = self
                    .mgr
                    .list()
                    .iter()
                    .map(|m| {
                        let r = self.mgr.resources(m);
                        let u = r.usage;
                        let known = |v: Option<u64>| v.unwrap_or(u64::MAX);
                        (
                            m.name.clone(),
                            known(u.cpu_usage_ns),
                            known(u.memory_current),
                            known(u.tasks_current),
                            known(u.io_read_bytes),
                            known(u.io_write_bytes),
                            known(r.ip_ingress_bytes),
                            known(r.ip_egress_bytes),
                            r.limits.memory_max,
                            known(u.oom_kills),
                        )
                    })
                    .collect();
                self.reply(hdr, &rows).await
            }
            _ => Err(CallError(
                "org.freedesktop.DBus.Error.UnknownMethod",
                format!("Unknown method {member}."),
            )),
        }
    }

    async fn machine_call(&self, msg: &Message, hdr: &Header<'_>, member: &str, name: &str) -> Reply {
        let mgr = &self.mgr;
        match member {
            "Terminate" => {
                mgr.terminate(name, &self.caller(hdr).await?)?;
                self.reply(hdr, &()).await
            }
            "Kill" => {
                let (who, signal): (String, i32) = msg.body().deserialize().map_err(CallError::bad_body)?;
                mgr.kill(name, &who, signal, &self.caller(hdr).await?)?;
                self.reply(hdr, &()).await
            }
            "GetAddresses" => self.addresses(hdr, name.to_owned()).await,
            "GetOSRelease" => self.os_release(hdr, name.to_owned()).await,
            "GetUIDShift" => self.reply(hdr, &mgr.uid_shift(name)?).await,
            "OpenRootDirectory" => self.open_root(hdr, name.to_owned()).await,
            _ => match MachineCall::decode(member, &msg.body()) {
                Some(Ok(MachineCall::Open(what))) => self.open_session(hdr, name.to_owned(), what).await,
                Some(Ok(MachineCall::Copy(copy))) => self.copy(hdr, name.to_owned(), copy).await,
                Some(Ok(MachineCall::Bind(bind))) => self.bind(hdr, name.to_owned(), bind).await,
                Some(Err(DecodeError::BadBody(e))) => Err(CallError::bad_body(e)),
                Some(Err(DecodeError::UnknownMethod)) | None => Err(CallError(
                    "org.freedesktop.DBus.Error.UnknownMethod",
                    format!("Unknown method {member}."),
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_callers_are_kept_per_connection_and_bounded() {
        let known = KnownCallers::default();
        let caller = Caller { uid: 1000, pid: 42 };
        known.insert(":1.7", caller);
        assert_eq!(known.get(":1.7"), Some(caller));
        assert_eq!(known.get(":1.8"), None);
        for i in 0..KnownCallers::MOST {
            known.insert(&format!(":2.{i}"), caller);
        }
        // Full: it started over rather than grow with every connection ever seen.
        assert_eq!(known.get(":1.7"), None);
        assert!(known.0.lock().unwrap().len() <= KnownCallers::MOST);
    }
}
