//! Signal names and numbers, realtime signals included (`SIGRTMIN+3` is systemd's halt request).

use std::str::FromStr;

use nix::sys::signal::Signal;

/// A signal number, 1..=SIGRTMAX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalNumber(pub i32);

/// A string that names no signal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown signal '{0}' (use a name such as SIGTERM or RTMIN+3, or a number)")]
pub struct BadSignal(pub String);

impl SignalNumber {
    /// systemd's halt request, what a booted machine gets when asked to stop.
    pub fn halt() -> Self {
        Self(libc::SIGRTMIN() + 3)
    }

    /// systemd's poweroff request.
    pub fn poweroff() -> Self {
        Self(libc::SIGRTMIN() + 4)
    }

    /// The signal's conventional name (`SIGTERM`, `SIGRTMIN+3`).
    pub fn name(self) -> String {
        let rtmin = libc::SIGRTMIN();
        if let Ok(sig) = Signal::try_from(self.0) {
            return sig.as_str().to_owned();
        }
        if self.0 >= rtmin && self.0 <= libc::SIGRTMAX() {
            return format!("SIGRTMIN+{}", self.0 - rtmin);
        }
        self.0.to_string()
    }
}

impl FromStr for SignalNumber {
    type Err = BadSignal;

    fn from_str(s: &str) -> Result<Self, BadSignal> {
        let bad = || BadSignal(s.to_owned());
        if let Ok(n) = s.parse::<i32>() {
            return if (1..=libc::SIGRTMAX()).contains(&n) { Ok(Self(n)) } else { Err(bad()) };
        }
        let upper = s.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        let (rtmin, rtmax) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        let rt = |base: i32, off: &str, sign: i32| -> Result<Self, BadSignal> {
            let off: i32 = if off.is_empty() { 0 } else { off.parse().map_err(|_| bad())? };
            let n = base + sign * off;
            if (rtmin..=rtmax).contains(&n) { Ok(Self(n)) } else { Err(bad()) }
        };
        if let Some(rest) = bare.strip_prefix("RTMIN") {
            return match rest.strip_prefix('+') {
                Some(off) => rt(rtmin, off, 1),
                None if rest.is_empty() => Ok(Self(rtmin)),
                None => Err(bad()),
            };
        }
        if let Some(rest) = bare.strip_prefix("RTMAX") {
            return match rest.strip_prefix('-') {
                Some(off) => rt(rtmax, off, -1),
                None if rest.is_empty() => Ok(Self(rtmax)),
                None => Err(bad()),
            };
        }
        Signal::from_str(&format!("SIG{bare}")).map(|s| Self(s as i32)).map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_numbers_and_realtime() {
        assert_eq!("SIGTERM".parse(), Ok(SignalNumber(15)));
        assert_eq!("term".parse(), Ok(SignalNumber(15)));
        assert_eq!("9".parse(), Ok(SignalNumber(9)));
        assert_eq!("SIGRTMIN+3".parse(), Ok(SignalNumber(libc::SIGRTMIN() + 3)));
        assert_eq!("RTMIN+4".parse(), Ok(SignalNumber::poweroff()));
        assert_eq!("RTMAX-1".parse(), Ok(SignalNumber(libc::SIGRTMAX() - 1)));
        assert!("SIGFOO".parse::<SignalNumber>().is_err());
        assert!("0".parse::<SignalNumber>().is_err());
        assert!("RTMIN+99".parse::<SignalNumber>().is_err());
    }

    #[test]
    fn names_round_trip() {
        for s in ["SIGKILL", "SIGRTMIN+3", "SIGHUP"] {
            assert_eq!(s.parse::<SignalNumber>().unwrap().name(), s);
        }
    }
}
