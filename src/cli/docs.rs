//! `mctl completions SHELL` and `mctl man DIR`: shell completion scripts and man pages made
//! from the command line's own definition (clap_complete, clap_mangen), so they never drift
//! from it; `bootstrap/install.sh` installs them.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, CliError};

/// Verbs whose first argument is a running machine's name (completed from `mctl list`).
const MACHINE_VERBS: &[&str] = &[
    "status",
    "show",
    "terminate",
    "kill",
    "poweroff",
    "reboot",
    "shell",
    "login",
    "copy-to",
    "copy-from",
    "bind",
    "commit",
    "set-property",
    "freeze",
    "thaw",
];

/// `mctl completions SHELL`.
pub fn completions(shell: Shell) -> Result<i32, CliError> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "mctl", &mut out);
    if shell == Shell::Bash {
        out.extend_from_slice(bash_machine_names().as_bytes());
    }
    std::io::stdout().write_all(&out).map_err(|e| CliError::new(format!("cannot write: {e}")))?;
    Ok(0)
}

/// For bash, running machines' names where a verb takes one; everything else as clap's script
/// completes it.
fn bash_machine_names() -> String {
    format!(
        r#"
_mctl_machines() {{
    local i verb=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -*) ;;
            *) verb="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    if [[ -n "$verb" && $((COMP_CWORD - i)) -eq 1 && "${{COMP_WORDS[COMP_CWORD]}}" != -* ]]; then
        case " {verbs} " in
            *" $verb "*)
                COMPREPLY=($(compgen -W "$(mctl list --no-legend 2>/dev/null | cut -d' ' -f1)" -- "${{COMP_WORDS[COMP_CWORD]}}"))
                return 0 ;;
        esac
    fi
    _mctl "$@"
}}
complete -F _mctl_machines -o bashdefault -o default mctl
"#,
        verbs = MACHINE_VERBS.join(" ")
    )
}

/// `mctl man DIR`: `mctl.1` and `mctl-VERB.1` for every verb.
pub fn man_pages(dir: &Path) -> Result<i32, CliError> {
    let write_err =
        |e: std::io::Error| CliError::new(format!("cannot write man pages to {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let cmd = Cli::command();
    let render = |cmd: clap::Command, file: String| -> Result<(), CliError> {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page).map_err(write_err)?;
        std::fs::write(dir.join(file), page).map_err(write_err)
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("mctl-{}", sub.get_name());
        render(sub.clone().name(name.clone()).bin_name(name.clone()), format!("{name}.1"))?;
    }
    render(cmd, "mctl.1".into())?;
    Ok(0)
}
