//! mctld's D-Bus service: a dispatcher over the connection's message stream.
//!
//! zbus's stock `ObjectServer` cannot serve machinectl: its `Properties.GetAll` takes a typed
//! interface name and rejects the empty one machinectl sends (meaning "all interfaces"), and it
//! returns properties in hash order where machinectl prints them in reply order. So mctld routes
//! calls itself: a thin adapter from messages to [`Manager`] calls, with machined's error names.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;
use serde::ser::SerializeMap;
use zbus::message::{Header, Type as MsgType};
use zbus::{Connection, Message, OwnedObjectPath, OwnedVariant, Variant};

use crate::images::store::ImageInfo;
use crate::manager::{Caller, Event, Machine, Manager, ManagerError, RegisterRequest};

use super::introspect::{self, IMAGE, Interface, MACHINE, MANAGER, MCTL_MANAGER};
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
            ManagerError::Failed(_) => "org.freedesktop.DBus.Error.Failed",
        };
        CallError(name, e.to_string())
    }
}

impl From<zbus::Error> for CallError {
    fn from(e: zbus::Error) -> Self {
        CallError::invalid_args(format!("Invalid arguments: {e}"))
    }
}

type Reply = Result<(), CallError>;

/// `RegisterMachine`'s arguments: name, id, service, class, leader, root directory.
type RegisterArgs = (String, Vec<u8>, String, String, u32, String);
/// `RegisterMachineWithNetwork`'s: the same plus interface indices.
type RegisterNetworkArgs = (String, Vec<u8>, String, String, u32, String, Vec<i32>);

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

/// A change to an image.
enum ImageOp {
    Remove,
    Rename(String),
    Clone(String, bool),
    ReadOnly(bool),
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

/// The service: a connection serving the manager.
#[derive(Clone)]
pub struct Service {
    conn: Connection,
    mgr: Arc<Manager>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl Service {
    /// Wraps a connection (already on the bus, names not yet requested).
    pub fn new(conn: Connection, mgr: Arc<Manager>) -> Self {
        Self { conn, mgr }
    }

    /// Serves calls and emits signals until the connection closes. `stream` must be created
    /// before the bus names are requested, so that no early call is missed.
    pub async fn run(&self, mut stream: zbus::MessageStream) {
        let signals = {
            let me = self.clone();
            let mut rx = self.mgr.subscribe();
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
        while let Some(msg) = stream.next().await {
            let Ok(msg) = msg else { continue };
            if msg.message_type() != MsgType::MethodCall {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move { me.handle(msg).await });
        }
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

    async fn handle(&self, msg: Message) {
        let hdr = msg.header();
        let result = self.dispatch(&msg, &hdr).await;
        if let Err(CallError(name, text)) = result {
            let _ = self.conn.reply_error(&hdr, name, &text).await;
        }
    }

    fn resolve(&self, path: &str, caller_pid: impl FnOnce() -> Option<u32>) -> Option<Object> {
        match path {
            "/" => Some(Object::Node(vec!["org".into()])),
            "/org" => Some(Object::Node(vec!["freedesktop".into()])),
            "/org/freedesktop" => Some(Object::Node(vec!["machine1".into()])),
            MANAGER_PATH => Some(Object::Manager),
            MACHINE_DIR => {
                Some(Object::Node(self.mgr.list().iter().map(|m| paths::escape(&m.name)).collect()))
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

    async fn caller(&self, hdr: &Header<'_>) -> Result<Caller, CallError> {
        let sender = hdr.sender().ok_or_else(|| CallError::invalid_args("message without sender"))?;
        let dbus = zbus::fdo::DBusProxy::new(&self.conn).await?;
        let creds = dbus.get_connection_credentials(sender.clone().into()).await.map_err(|e| {
            CallError("org.freedesktop.DBus.Error.AccessDenied", format!("cannot identify caller: {e}"))
        })?;
        match (creds.unix_user_id(), creds.process_id()) {
            (Some(uid), Some(pid)) => Ok(Caller { uid, pid }),
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
            Object::Machine(_) => &[&MACHINE],
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
                Object::Image(i) if name == IMAGE.name => Some(image_props(i)),
                _ => ifaces.iter().any(|i| i.name == name).then(|| Props(Vec::new())),
            }
        };
        match member {
            "GetAll" => {
                let (iface,): (String,) = msg.body().deserialize()?;
                if iface.is_empty() {
                    // sd-bus semantics: every interface of the object, in order.
                    let mut out = Vec::new();
                    for i in ifaces {
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
                let (iface, prop): (String, String) = msg.body().deserialize()?;
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
        let body = msg.body();
        let mgr = &self.mgr;
        match member {
            "ListMachines" => {
                let list: Vec<(String, String, String, OwnedObjectPath)> = mgr
                    .list()
                    .into_iter()
                    .map(|m| {
                        let p = opath(paths::machine_path(&m.name));
                        (m.name, m.class.as_str().to_owned(), m.service, p)
                    })
                    .collect();
                self.reply(hdr, &list).await
            }
            "GetMachine" => {
                let (name,): (String,) = body.deserialize()?;
                let m = mgr.get(&name)?;
                self.reply(hdr, &opath(paths::machine_path(&m.name))).await
            }
            "GetMachineByPID" => {
                let (pid,): (u32,) = body.deserialize()?;
                let pid = if pid == 0 { self.caller(hdr).await?.pid } else { pid };
                let m = mgr.by_pid(pid)?;
                self.reply(hdr, &opath(paths::machine_path(&m.name))).await
            }
            "ListImages" => {
                let list: Vec<ImageEntry> = mgr.list_images()?.iter().map(image_entry).collect();
                self.reply(hdr, &list).await
            }
            "GetImage" => {
                let (name,): (String,) = body.deserialize()?;
                let i = mgr.get_image(&name)?;
                self.reply(hdr, &opath(paths::image_path(&i.name))).await
            }
            "GetImageOSRelease" => {
                let (name,): (String,) = body.deserialize()?;
                let fields: HashMap<String, String> = mgr.image_os_release(&name)?.into_iter().collect();
                self.reply(hdr, &fields).await
            }
            "RemoveImage" | "RenameImage" | "CloneImage" | "MarkImageReadOnly" => {
                let (name, op) = match member {
                    "RemoveImage" => {
                        let (n,): (String,) = body.deserialize()?;
                        (n, ImageOp::Remove)
                    }
                    "RenameImage" => {
                        let (n, to): (String, String) = body.deserialize()?;
                        (n, ImageOp::Rename(to))
                    }
                    "CloneImage" => {
                        let (n, to, ro): (String, String, bool) = body.deserialize()?;
                        (n, ImageOp::Clone(to, ro))
                    }
                    _ => {
                        let (n, ro): (String, bool) = body.deserialize()?;
                        (n, ImageOp::ReadOnly(ro))
                    }
                };
                self.image_op(hdr, name, op).await
            }
            "RegisterMachine" | "RegisterMachineWithNetwork" => {
                let (name, id, service, class, leader, root_directory, netif) = if member == "RegisterMachine"
                {
                    let (n, i, s, c, l, r): RegisterArgs = body.deserialize()?;
                    (n, i, s, c, l, r, Vec::new())
                } else {
                    body.deserialize::<RegisterNetworkArgs>()?
                };
                let req = RegisterRequest { name, id, service, class, leader, root_directory, netif };
                let caller = self.caller(hdr).await?;
                let m = mgr.register(req, &caller)?;
                tracing::info!(machine = %m.name, leader = m.leader, "machine registered");
                self.reply(hdr, &opath(paths::machine_path(&m.name))).await
            }
            "UnregisterMachine" => {
                let (name,): (String,) = body.deserialize()?;
                mgr.unregister(&name, &self.caller(hdr).await?)?;
                self.reply(hdr, &()).await
            }
            "TerminateMachine" => {
                let (name,): (String,) = body.deserialize()?;
                mgr.terminate(&name, &self.caller(hdr).await?)?;
                self.reply(hdr, &()).await
            }
            "KillMachine" => {
                let (name, who, signal): (String, String, i32) = body.deserialize()?;
                mgr.kill(&name, &who, signal, &self.caller(hdr).await?)?;
                self.reply(hdr, &()).await
            }
            "GetMachineAddresses" => {
                let (name,): (String,) = body.deserialize()?;
                self.reply(hdr, &mgr.addresses(&name)?).await
            }
            "GetMachineOSRelease" => {
                let (name,): (String,) = body.deserialize()?;
                let fields: HashMap<String, String> = mgr.os_release(&name)?.into_iter().collect();
                self.reply(hdr, &fields).await
            }
            "GetMachineUIDShift" => {
                let (name,): (String,) = body.deserialize()?;
                self.reply(hdr, &mgr.uid_shift(&name)?).await
            }
            _ => Err(CallError(
                "org.freedesktop.DBus.Error.UnknownMethod",
                format!("Unknown method {member}."),
            )),
        }
    }

    async fn image_call(&self, msg: &Message, hdr: &Header<'_>, member: &str, name: &str) -> Reply {
        let body = msg.body();
        let op = match member {
            "Remove" => ImageOp::Remove,
            "Rename" => ImageOp::Rename(body.deserialize::<(String,)>()?.0),
            "Clone" => {
                let (to, ro): (String, bool) = body.deserialize()?;
                ImageOp::Clone(to, ro)
            }
            "MarkReadOnly" => ImageOp::ReadOnly(body.deserialize::<(bool,)>()?.0),
            "GetOSRelease" => {
                let fields: HashMap<String, String> = self.mgr.image_os_release(name)?.into_iter().collect();
                return self.reply(hdr, &fields).await;
            }
            _ => {
                return Err(CallError(
                    "org.freedesktop.DBus.Error.UnknownMethod",
                    format!("Unknown method {member}."),
                ));
            }
        };
        self.image_op(hdr, name.to_owned(), op).await
    }

    /// Runs an image change off the async runtime (a clone copies a whole tree).
    async fn image_op(&self, hdr: &Header<'_>, name: String, op: ImageOp) -> Reply {
        let caller = self.caller(hdr).await?;
        let mgr = self.mgr.clone();
        tokio::task::spawn_blocking(move || match op {
            ImageOp::Remove => mgr.remove_image(&name, &caller),
            ImageOp::Rename(to) => mgr.rename_image(&name, &to, &caller),
            ImageOp::Clone(to, ro) => mgr.clone_image(&name, &to, ro, &caller),
            ImageOp::ReadOnly(ro) => mgr.mark_image_read_only(&name, ro, &caller),
        })
        .await
        .map_err(|e| CallError("org.freedesktop.DBus.Error.Failed", e.to_string()))??;
        self.reply(hdr, &()).await
    }

    async fn mctl_call(&self, msg: &Message, hdr: &Header<'_>, member: &str) -> Reply {
        match member {
            "GetMachineControlGroup" => {
                let (name,): (String,) = msg.body().deserialize()?;
                self.reply(hdr, &self.mgr.control_group(&name)?).await
            }
            "FreezeMachine" | "ThawMachine" => {
                let (name,): (String,) = msg.body().deserialize()?;
                let caller = self.caller(hdr).await?;
                let mgr = self.mgr.clone();
                let frozen = member == "FreezeMachine";
                // Waiting for the freezer blocks; keep it off the runtime's workers.
                tokio::task::spawn_blocking(move || mgr.freeze(&name, frozen, &caller))
                    .await
                    .map_err(|e| CallError("org.freedesktop.DBus.Error.Failed", e.to_string()))??;
                self.reply(hdr, &()).await
            }
            "IsMachineFrozen" => {
                let (name,): (String,) = msg.body().deserialize()?;
                let m = self.mgr.get(&name)?;
                self.reply(hdr, &self.mgr.is_frozen(&m)).await
            }
            "ListMachinesDetailed" => {
                let mgr = self.mgr.clone();
                // Reads every machine's os-release and joins network namespaces: blocking work.
                let rows: Vec<MachineDetails> = tokio::task::spawn_blocking(move || mgr.overview())
                    .await
                    .map_err(|e| CallError("org.freedesktop.DBus.Error.Failed", e.to_string()))?
                    .into_iter()
                    .map(|o| (o.name, o.class, o.service, o.os_id, o.version_id, o.addresses))
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
                let (who, signal): (String, i32) = msg.body().deserialize()?;
                mgr.kill(name, &who, signal, &self.caller(hdr).await?)?;
                self.reply(hdr, &()).await
            }
            "GetAddresses" => self.reply(hdr, &mgr.addresses(name)?).await,
            "GetOSRelease" => {
                let fields: HashMap<String, String> = mgr.os_release(name)?.into_iter().collect();
                self.reply(hdr, &fields).await
            }
            "GetUIDShift" => self.reply(hdr, &mgr.uid_shift(name)?).await,
            _ => Err(CallError(
                "org.freedesktop.DBus.Error.UnknownMethod",
                format!("Unknown method {member}."),
            )),
        }
    }
}
