//! The machine1 Manager methods mctld serves, decoded once from a message into a typed call.
//! Method names live here and in the introspection tables ([`introspect::MANAGER`]); a test
//! keeps the two the same.

use zbus::message::Body;

use crate::manager::RegisterRequest;
use crate::manager::sessions::ShellRequest;

#[cfg(test)]
use super::introspect;

/// A change to an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ImageOp {
    Remove,
    Rename(String),
    Clone(String, bool),
    ReadOnly(bool),
}

/// One decoded `org.freedesktop.machine1.Manager` call.
#[derive(Debug)]
pub(super) enum ManagerCall {
    ListMachines,
    GetMachine(String),
    GetMachineByPid(u32),
    ListImages,
    GetImage(String),
    GetImageOsRelease(String),
    Image(String, ImageOp),
    Register(RegisterRequest),
    Unregister(String),
    Terminate(String),
    Kill {
        name: String,
        who: String,
        signal: i32,
    },
    Addresses(String),
    OsRelease(String),
    UidShift(String),
    /// `OpenMachinePTY`, `OpenMachineLogin`, `OpenMachineShell`.
    Open(String, SessionCall),
    /// `CopyFromMachine[WithFlags]`, `CopyToMachine[WithFlags]`.
    Copy(String, CopyCall),
    /// `BindMountMachine`.
    Bind(String, BindCall),
    /// `OpenMachineRootDirectory`.
    OpenRoot(String),
}

/// What a session call opens.
#[derive(Debug)]
pub(super) enum SessionCall {
    Pty,
    Login,
    Shell(ShellRequest),
}

/// A copy between the host and a machine.
#[derive(Debug)]
pub(super) struct CopyCall {
    pub(super) to_machine: bool,
    pub(super) source: String,
    pub(super) destination: String,
    pub(super) flags: u64,
}

/// A bind mount into a machine.
#[derive(Debug)]
pub(super) struct BindCall {
    pub(super) source: String,
    pub(super) destination: String,
    pub(super) read_only: bool,
    pub(super) mkdir: bool,
}

impl SessionCall {
    fn shell((user, path, args, environment): (String, String, Vec<String>, Vec<String>)) -> SessionCall {
        SessionCall::Shell(ShellRequest { user, path, args, environment })
    }
}

impl CopyCall {
    /// Decodes a machine object's copy method (`CopyTo`, `CopyFromWithFlags`, ...): the
    /// Manager's arguments without the name.
    pub(super) fn decode_on_machine(member: &str, body: &Body) -> Option<Result<CopyCall, DecodeError>> {
        let to_machine = match member {
            "CopyTo" | "CopyToWithFlags" => true,
            "CopyFrom" | "CopyFromWithFlags" => false,
            _ => return None,
        };
        let decoded = if member.ends_with("WithFlags") {
            body.deserialize::<(String, String, u64)>()
        } else {
            body.deserialize::<(String, String)>().map(|(s, d)| (s, d, 0))
        };
        Some(
            decoded
                .map(|(source, destination, flags)| CopyCall { to_machine, source, destination, flags })
                .map_err(DecodeError::BadBody),
        )
    }
}

impl BindCall {
    fn new((source, destination, read_only, mkdir): (String, String, bool, bool)) -> BindCall {
        BindCall { source, destination, read_only, mkdir }
    }
}

/// A machine object's session, copy or bind method, decoded; `None` for other members.
pub(super) enum MachineCall {
    Open(SessionCall),
    Copy(CopyCall),
    Bind(BindCall),
}

impl MachineCall {
    pub(super) fn decode(member: &str, body: &Body) -> Option<Result<MachineCall, DecodeError>> {
        let bad = DecodeError::BadBody;
        Some(match member {
            "OpenPTY" => Ok(MachineCall::Open(SessionCall::Pty)),
            "OpenLogin" => Ok(MachineCall::Open(SessionCall::Login)),
            "OpenShell" => body.deserialize().map(|a| MachineCall::Open(SessionCall::shell(a))).map_err(bad),
            "BindMount" => body.deserialize().map(|a| MachineCall::Bind(BindCall::new(a))).map_err(bad),
            _ => return CopyCall::decode_on_machine(member, body).map(|r| r.map(MachineCall::Copy)),
        })
    }
}

/// Why a call could not be decoded.
#[derive(Debug)]
pub(super) enum DecodeError {
    /// No such method (on this interface).
    UnknownMethod,
    /// The body is not the method's arguments.
    BadBody(zbus::Error),
}

impl ManagerCall {
    /// Decodes `member` with its body.
    pub(super) fn decode(member: &str, body: &Body) -> Result<ManagerCall, DecodeError> {
        let bad = DecodeError::BadBody;
        let name = || body.deserialize::<(String,)>().map(|(n,)| n).map_err(bad);
        Ok(match member {
            "ListMachines" => ManagerCall::ListMachines,
            "GetMachine" => ManagerCall::GetMachine(name()?),
            "GetMachineByPID" => ManagerCall::GetMachineByPid(body.deserialize::<(u32,)>().map_err(bad)?.0),
            "ListImages" => ManagerCall::ListImages,
            "GetImage" => ManagerCall::GetImage(name()?),
            "GetImageOSRelease" => ManagerCall::GetImageOsRelease(name()?),
            "RemoveImage" => ManagerCall::Image(name()?, ImageOp::Remove),
            "RenameImage" => {
                let (n, to): (String, String) = body.deserialize().map_err(bad)?;
                ManagerCall::Image(n, ImageOp::Rename(to))
            }
            "CloneImage" => {
                let (n, to, ro): (String, String, bool) = body.deserialize().map_err(bad)?;
                ManagerCall::Image(n, ImageOp::Clone(to, ro))
            }
            "MarkImageReadOnly" => {
                let (n, ro): (String, bool) = body.deserialize().map_err(bad)?;
                ManagerCall::Image(n, ImageOp::ReadOnly(ro))
            }
            "RegisterMachine" => {
                let (name, id, service, class, leader, root_directory): (
                    String,
                    Vec<u8>,
                    String,
                    String,
                    u32,
                    String,
                ) = body.deserialize().map_err(bad)?;
                ManagerCall::Register(RegisterRequest {
                    name,
                    id,
                    service,
                    class,
                    leader,
                    root_directory,
                    netif: Vec::new(),
                })
            }
            "RegisterMachineWithNetwork" => {
                let (name, id, service, class, leader, root_directory, netif): (
                    String,
                    Vec<u8>,
                    String,
                    String,
                    u32,
                    String,
                    Vec<i32>,
                ) = body.deserialize().map_err(bad)?;
                ManagerCall::Register(RegisterRequest {
                    name,
                    id,
                    service,
                    class,
                    leader,
                    root_directory,
                    netif,
                })
            }
            "UnregisterMachine" => ManagerCall::Unregister(name()?),
            "TerminateMachine" => ManagerCall::Terminate(name()?),
            "KillMachine" => {
                let (name, who, signal): (String, String, i32) = body.deserialize().map_err(bad)?;
                ManagerCall::Kill { name, who, signal }
            }
            "GetMachineAddresses" => ManagerCall::Addresses(name()?),
            "GetMachineOSRelease" => ManagerCall::OsRelease(name()?),
            "GetMachineUIDShift" => ManagerCall::UidShift(name()?),
            "OpenMachinePTY" => ManagerCall::Open(name()?, SessionCall::Pty),
            "OpenMachineRootDirectory" => ManagerCall::OpenRoot(name()?),
            "OpenMachineLogin" => ManagerCall::Open(name()?, SessionCall::Login),
            "OpenMachineShell" => {
                let (name, user, path, args, env): (String, String, String, Vec<String>, Vec<String>) =
                    body.deserialize().map_err(bad)?;
                ManagerCall::Open(name, SessionCall::shell((user, path, args, env)))
            }
            "BindMountMachine" => {
                let (name, source, destination, ro, mkdir): (String, String, String, bool, bool) =
                    body.deserialize().map_err(bad)?;
                ManagerCall::Bind(name, BindCall::new((source, destination, ro, mkdir)))
            }
            "CopyFromMachine" | "CopyToMachine" | "CopyFromMachineWithFlags" | "CopyToMachineWithFlags" => {
                let (name, source, destination, flags) = if member.ends_with("WithFlags") {
                    body.deserialize::<(String, String, String, u64)>().map_err(bad)?
                } else {
                    let (n, s, d): (String, String, String) = body.deserialize().map_err(bad)?;
                    (n, s, d, 0)
                };
                let to_machine = member.starts_with("CopyTo");
                ManagerCall::Copy(name, CopyCall { to_machine, source, destination, flags })
            }
            _ => return Err(DecodeError::UnknownMethod),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoding an empty body: known methods take it (no arguments) or refuse it as a bad
    /// body; only unknown names are unknown.
    fn known(member: &str) -> bool {
        let msg = zbus::Message::method_call("/org/freedesktop/machine1", member).build(&()).unwrap();
        !matches!(ManagerCall::decode(member, &msg.body()), Err(DecodeError::UnknownMethod))
    }

    #[test]
    fn the_decoder_knows_exactly_the_introspected_methods() {
        for m in introspect::MANAGER.methods {
            assert!(known(m.name), "{} is introspected but not decoded", m.name);
        }
        // Names the decoder would take but the introspection does not list would show here.
        for stray in ["SetPoolLimit", "GetMachines", "listmachines"] {
            assert!(!known(stray), "{stray} is decoded");
        }
    }
}
