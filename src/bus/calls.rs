//! The machine1 Manager methods mctld serves, decoded once from a message into a typed call.
//! Method names live here and in the introspection tables ([`introspect::MANAGER`]); a test
//! keeps the two the same.

use zbus::message::Body;

use crate::manager::RegisterRequest;

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
    Kill { name: String, who: String, signal: i32 },
    Addresses(String),
    OsRelease(String),
    UidShift(String),
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
        for stray in ["OpenMachineShell", "GetMachines", "listmachines"] {
            assert!(!known(stray), "{stray} is decoded");
        }
    }
}
