//! The HTTP client of every download (pulls of tarballs, LXC images and OCI registries).

use std::time::Duration;

use reqwest::blocking::{Client, ClientBuilder};

/// A client builder with mctl's user agent, a bounded connect and no overall timeout (images
/// are large). TLS is rustls over *ring*: aws-lc, rustls' default, runs a CPU-probing
/// constructor (slow under a hypervisor) and adds about 50 KB of data relocated at start-up to
/// every mctl process, also the launches that never download.
pub fn client_builder() -> ClientBuilder {
    // A second call (or a provider installed earlier) leaves the installed one in place.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .user_agent(concat!("mctl/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .timeout(None)
        // Not getaddrinfo(3): a static glibc cannot load the host's NSS modules.
        .dns_resolver(std::sync::Arc::new(crate::hostdb::HostResolver))
}
