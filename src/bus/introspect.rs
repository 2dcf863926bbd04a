//! Introspection data: the interfaces mctld serves, as tables, and the XML built from them.

/// A method: name, input args, output args (name, signature), and whether sd-bus would mark it
/// privileged.
#[derive(Debug)]
pub struct Method {
    /// Member name.
    pub name: &'static str,
    /// Input arguments.
    pub args_in: &'static [(&'static str, &'static str)],
    /// Output arguments.
    pub args_out: &'static [(&'static str, &'static str)],
    /// `org.freedesktop.systemd1.Privileged` annotation.
    pub privileged: bool,
}

/// An interface.
#[derive(Debug)]
pub struct Interface {
    /// D-Bus interface name (`org.freedesktop.machine1.Manager`).
    pub name: &'static str,
    /// Read-only properties: name, signature, emits-changed value (`const` or `false`).
    pub properties: &'static [(&'static str, &'static str, &'static str)],
    /// The methods mctld serves on it (a subset of machined's), in the XML's order.
    pub methods: &'static [Method],
    /// Signals: name and args.
    pub signals: &'static [(&'static str, &'static [(&'static str, &'static str)])],
}

const fn m(
    name: &'static str,
    args_in: &'static [(&'static str, &'static str)],
    args_out: &'static [(&'static str, &'static str)],
) -> Method {
    Method { name, args_in, args_out, privileged: false }
}

const fn p(
    name: &'static str,
    args_in: &'static [(&'static str, &'static str)],
    args_out: &'static [(&'static str, &'static str)],
) -> Method {
    Method { name, args_in, args_out, privileged: true }
}

/// `org.freedesktop.machine1.Manager`, as far as mctld implements it.
pub const MANAGER: Interface = Interface {
    name: "org.freedesktop.machine1.Manager",
    properties: &[("PoolPath", "s", "false"), ("PoolUsage", "t", "false"), ("PoolLimit", "t", "false")],
    methods: &[
        m("GetMachine", &[("name", "s")], &[("machine", "o")]),
        m("GetImage", &[("name", "s")], &[("image", "o")]),
        m("GetMachineByPID", &[("pid", "u")], &[("machine", "o")]),
        m("ListMachines", &[], &[("machines", "a(ssso)")]),
        m("ListImages", &[], &[("images", "a(ssbttto)")]),
        p(
            "RegisterMachine",
            &[
                ("name", "s"),
                ("id", "ay"),
                ("service", "s"),
                ("class", "s"),
                ("leader", "u"),
                ("root_directory", "s"),
            ],
            &[("path", "o")],
        ),
        p(
            "RegisterMachineWithNetwork",
            &[
                ("name", "s"),
                ("id", "ay"),
                ("service", "s"),
                ("class", "s"),
                ("leader", "u"),
                ("root_directory", "s"),
                ("ifindices", "ai"),
            ],
            &[("path", "o")],
        ),
        m("UnregisterMachine", &[("name", "s")], &[]),
        m("TerminateMachine", &[("id", "s")], &[]),
        m("KillMachine", &[("name", "s"), ("who", "s"), ("signal", "i")], &[]),
        m("GetMachineAddresses", &[("name", "s")], &[("addresses", "a(iay)")]),
        m("GetMachineOSRelease", &[("name", "s")], &[("fields", "a{ss}")]),
        m("GetMachineUIDShift", &[("name", "s")], &[("shift", "u")]),
        p("OpenMachinePTY", &[("name", "s")], &[("pty", "h"), ("pty_path", "s")]),
        m("OpenMachineLogin", &[("name", "s")], &[("pty", "h"), ("pty_path", "s")]),
        m(
            "OpenMachineShell",
            &[("name", "s"), ("user", "s"), ("path", "s"), ("args", "as"), ("environment", "as")],
            &[("pty", "h"), ("pty_path", "s")],
        ),
        m(
            "BindMountMachine",
            &[("name", "s"), ("source", "s"), ("destination", "s"), ("read_only", "b"), ("mkdir", "b")],
            &[],
        ),
        m("CopyFromMachine", &[("name", "s"), ("source", "s"), ("destination", "s")], &[]),
        m("CopyToMachine", &[("name", "s"), ("source", "s"), ("destination", "s")], &[]),
        m(
            "CopyFromMachineWithFlags",
            &[("name", "s"), ("source", "s"), ("destination", "s"), ("flags", "t")],
            &[],
        ),
        m(
            "CopyToMachineWithFlags",
            &[("name", "s"), ("source", "s"), ("destination", "s"), ("flags", "t")],
            &[],
        ),
        m("OpenMachineRootDirectory", &[("name", "s")], &[("fd", "h")]),
        m("RemoveImage", &[("name", "s")], &[]),
        m("RenameImage", &[("name", "s"), ("new_name", "s")], &[]),
        m("CloneImage", &[("name", "s"), ("new_name", "s"), ("read_only", "b")], &[]),
        m("MarkImageReadOnly", &[("name", "s"), ("read_only", "b")], &[]),
        m("GetImageOSRelease", &[("name", "s")], &[("os_release", "a{ss}")]),
    ],
    signals: &[
        ("MachineNew", &[("machine", "s"), ("path", "o")]),
        ("MachineRemoved", &[("machine", "s"), ("path", "o")]),
    ],
};

/// `org.freedesktop.machine1.Machine`, as far as mctld implements it.
pub const MACHINE: Interface = Interface {
    name: "org.freedesktop.machine1.Machine",
    properties: &[
        ("Name", "s", "const"),
        ("Id", "ay", "const"),
        ("Timestamp", "t", "const"),
        ("TimestampMonotonic", "t", "const"),
        ("Service", "s", "const"),
        ("Unit", "s", "const"),
        ("Leader", "u", "const"),
        ("Class", "s", "const"),
        ("RootDirectory", "s", "const"),
        ("NetworkInterfaces", "ai", "const"),
        ("State", "s", "false"),
    ],
    methods: &[
        m("Terminate", &[], &[]),
        m("Kill", &[("who", "s"), ("signal", "i")], &[]),
        m("GetAddresses", &[], &[("addresses", "a(iay)")]),
        m("GetOSRelease", &[], &[("fields", "a{ss}")]),
        m("GetUIDShift", &[], &[("shift", "u")]),
        m("OpenPTY", &[], &[("pty", "h"), ("pty_path", "s")]),
        m("OpenLogin", &[], &[("pty", "h"), ("pty_path", "s")]),
        m(
            "OpenShell",
            &[("user", "s"), ("path", "s"), ("args", "as"), ("environment", "as")],
            &[("pty", "h"), ("pty_path", "s")],
        ),
        m("BindMount", &[("source", "s"), ("destination", "s"), ("read_only", "b"), ("mkdir", "b")], &[]),
        m("CopyFrom", &[("source", "s"), ("destination", "s")], &[]),
        m("CopyTo", &[("source", "s"), ("destination", "s")], &[]),
        m("CopyFromWithFlags", &[("source", "s"), ("destination", "s"), ("flags", "t")], &[]),
        m("CopyToWithFlags", &[("source", "s"), ("destination", "s"), ("flags", "t")], &[]),
        m("OpenRootDirectory", &[], &[("fd", "h")]),
    ],
    signals: &[],
};

/// `org.freedesktop.machine1.Image`, as far as mctld implements it.
pub const IMAGE: Interface = Interface {
    name: "org.freedesktop.machine1.Image",
    properties: &[
        ("Name", "s", "false"),
        ("Path", "s", "false"),
        ("Type", "s", "false"),
        ("ReadOnly", "b", "false"),
        ("CreationTimestamp", "t", "false"),
        ("ModificationTimestamp", "t", "false"),
        ("Usage", "t", "false"),
        ("Limit", "t", "false"),
        ("UsageExclusive", "t", "false"),
        ("LimitExclusive", "t", "false"),
    ],
    methods: &[
        m("Remove", &[], &[]),
        m("Rename", &[("new_name", "s")], &[]),
        m("Clone", &[("new_name", "s"), ("read_only", "b")], &[]),
        m("MarkReadOnly", &[("read_only", "b")], &[]),
        m("GetOSRelease", &[], &[("os_release", "a{ss}")]),
    ],
    signals: &[],
};

/// A machine's resource limits and usage (mctl's addition on machine objects), with
/// systemd's property names; `u64::MAX` is infinity for a limit and unknown for a figure.
pub const MACHINE_RESOURCES: Interface = Interface {
    name: "org.mctl.MachineResources1",
    properties: &[
        ("CPUUsageNSec", "t", "false"),
        ("MemoryCurrent", "t", "false"),
        ("MemoryPeak", "t", "false"),
        ("TasksCurrent", "t", "false"),
        ("IOReadBytes", "t", "false"),
        ("IOWriteBytes", "t", "false"),
        ("IPIngressBytes", "t", "false"),
        ("IPEgressBytes", "t", "false"),
        ("OOMKills", "t", "false"),
        ("MemoryMax", "t", "false"),
        ("MemoryHigh", "t", "false"),
        ("MemorySwapMax", "t", "false"),
        ("TasksMax", "t", "false"),
        ("CPUWeight", "t", "false"),
        ("CPUQuotaPerSecUSec", "t", "false"),
        ("AllowedCPUs", "s", "false"),
        ("IOWeight", "t", "false"),
    ],
    methods: &[],
    signals: &[],
};

/// mctl's own additions on the manager object.
pub const MCTL_MANAGER: Interface = Interface {
    name: "org.mctl.Manager1",
    properties: &[],
    methods: &[
        m("GetMachineControlGroup", &[("name", "s")], &[("cgroup", "s")]),
        m("FreezeMachine", &[("name", "s")], &[]),
        m("ThawMachine", &[("name", "s")], &[]),
        m("IsMachineFrozen", &[("name", "s")], &[("frozen", "b")]),
        m("ListMachinesDetailed", &[], &[("machines", "a(sssssa(iay))")]),
        p("SetMachineProperties", &[("name", "s"), ("runtime", "b"), ("properties", "as")], &[]),
        m("ListMachineUsage", &[], &[("machines", "a(stttttttt)")]),
    ],
    signals: &[],
};

const HEADER: &str = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
"https://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
"#;

const STANDARD: &str = r#" <interface name="org.freedesktop.DBus.Peer">
  <method name="Ping"/>
  <method name="GetMachineId">
   <arg type="s" name="machine_uuid" direction="out"/>
  </method>
 </interface>
 <interface name="org.freedesktop.DBus.Introspectable">
  <method name="Introspect">
   <arg name="xml_data" type="s" direction="out"/>
  </method>
 </interface>
 <interface name="org.freedesktop.DBus.Properties">
  <method name="Get">
   <arg name="interface_name" direction="in" type="s"/>
   <arg name="property_name" direction="in" type="s"/>
   <arg name="value" direction="out" type="v"/>
  </method>
  <method name="GetAll">
   <arg name="interface_name" direction="in" type="s"/>
   <arg name="props" direction="out" type="a{sv}"/>
  </method>
  <method name="Set">
   <arg name="interface_name" direction="in" type="s"/>
   <arg name="property_name" direction="in" type="s"/>
   <arg name="value" direction="in" type="v"/>
  </method>
  <signal name="PropertiesChanged">
   <arg type="s" name="interface_name"/>
   <arg type="a{sv}" name="changed_properties"/>
   <arg type="as" name="invalidated_properties"/>
  </signal>
 </interface>
"#;

fn interface_xml(i: &Interface) -> String {
    let mut x = format!(" <interface name=\"{}\">\n", i.name);
    for (name, sig, emits) in i.properties {
        x.push_str(&format!("  <property name=\"{name}\" type=\"{sig}\" access=\"read\">\n"));
        x.push_str(&format!(
            "   <annotation name=\"org.freedesktop.DBus.Property.EmitsChangedSignal\" value=\"{emits}\"/>\n"
        ));
        x.push_str("  </property>\n");
    }
    for meth in i.methods {
        if meth.args_in.is_empty() && meth.args_out.is_empty() && !meth.privileged {
            x.push_str(&format!("  <method name=\"{}\">\n  </method>\n", meth.name));
            continue;
        }
        x.push_str(&format!("  <method name=\"{}\">\n", meth.name));
        for (n, t) in meth.args_in {
            x.push_str(&format!("   <arg type=\"{t}\" name=\"{n}\" direction=\"in\"/>\n"));
        }
        for (n, t) in meth.args_out {
            x.push_str(&format!("   <arg type=\"{t}\" name=\"{n}\" direction=\"out\"/>\n"));
        }
        if meth.privileged {
            x.push_str("   <annotation name=\"org.freedesktop.systemd1.Privileged\" value=\"true\"/>\n");
        }
        x.push_str("  </method>\n");
    }
    for (name, args) in i.signals {
        x.push_str(&format!("  <signal name=\"{name}\">\n"));
        for (n, t) in *args {
            x.push_str(&format!("   <arg type=\"{t}\" name=\"{n}\"/>\n"));
        }
        x.push_str("  </signal>\n");
    }
    x.push_str(" </interface>\n");
    x
}

/// The introspection XML of an object with `interfaces` (besides the standard ones) and
/// `children` nodes.
pub fn node_xml(interfaces: &[&Interface], children: &[String]) -> String {
    let mut x = String::from(HEADER);
    x.push_str(STANDARD);
    for i in interfaces {
        x.push_str(&interface_xml(i));
    }
    for c in children {
        x.push_str(&format!(" <node name=\"{c}\"/>\n"));
    }
    x.push_str("</node>\n");
    x
}

/// The signature of a property of `iface`.
pub fn property_signature(iface: &Interface, name: &str) -> Option<&'static str> {
    iface.properties.iter().find(|(n, _, _)| *n == name).map(|(_, s, _)| *s)
}
