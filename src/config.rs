//! Settings: defaults in code, then a TOML file, then `KAIBIAO_*` environment variables.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the settings are not valid: {0}")]
pub struct ConfigError(String);

/// Everything the server can be told. Works with no file and no variables at all.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Where bids, decrypted files and the SQLite database live.
    pub data_dir: PathBuf,
    /// The server's key-encryption key (created at first start, mode 0600); empty means
    /// `<data_dir>/master.key`. Put it on other storage than the data, e.g. a secrets mount, so
    /// that a copy of the data folder and database alone cannot open the phones' answers.
    pub master_key_file: PathBuf,
    /// `sqlite://…` or `postgres://…`; empty means SQLite at `<data_dir>/kaibiao.db`.
    pub database_url: String,
    /// The address bidders' phones reach the server at, put into QR codes; empty means
    /// `http://<bind>`.
    pub public_url: String,
    /// The largest bid upload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// How long a decryption QR code stays valid.
    pub challenge_ttl_secs: u64,
    /// How often the server pings each websocket client.
    pub ws_heartbeat_secs: u64,
    /// How often, at most, every viewer of an opening whose log moved on is sent the platform's
    /// signed head of it (so that viewers keep proof of what the log held).
    pub head_push_secs: u64,
    /// A websocket client that has not answered (pong or any message) for this long is dropped,
    /// so a viewer that stops reading holds no buffers.
    pub ws_client_timeout_secs: u64,
    /// If set and no agent exists, an agent `admin` with this password is created at start.
    pub admin_password: Option<String>,
    /// Mark session cookies `Secure` (set when served over HTTPS).
    pub secure_cookies: bool,
    /// `tracing` filter, e.g. `info` or `kaibiao=debug,info`.
    pub log: String,
    /// Reverse proxies in front of the server (addresses or ranges, e.g. `["127.0.0.1",
    /// "10.0.0.0/8"]`; `KAIBIAO_TRUSTED_PROXIES='[127.0.0.1]'`). A request from one of them is
    /// taken to come from the address it puts in `X-Forwarded-For` (the last one that is not
    /// itself a trusted proxy), so that wrong passwords hold back the client that sent them, not
    /// everyone behind the proxy. Empty: the header is ignored (anyone could write it).
    pub trusted_proxies: Vec<IpRange>,
    /// A PEM file of the certificates of the CAs (roots or intermediates) whose SM2 certificates
    /// bidders may register (CA 互认). Set, every registered key must be a certificate one of
    /// them issued, valid and fit for its use, and a bid is taken only while its signing
    /// certificate is valid. Unset: certificates and bare public keys are taken on the agent's
    /// word (a warning is logged at start).
    pub trusted_cas: Option<PathBuf>,
}

/// An address or a range of addresses (`10.0.0.0/8`, `::1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange(pub ipnet::IpNet);

impl IpRange {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl std::str::FromStr for IpRange {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let s = s.trim();
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
            // An IPv4 range written as IPv6 (`::ffff:10.0.0.0/104`) is the IPv4 range, as the
            // addresses it is matched against are made IPv4 too.
            .map(|net| match net {
                ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
                    .network()
                    .to_ipv4_mapped()
                    .and_then(|v4| ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).ok())
                    .map_or(net, ipnet::IpNet::V4),
                _ => net,
            })
            .map(IpRange)
            .map_err(|_| {
                ConfigError(format!(
                    "trusted_proxies: {s:?} is neither an address (10.0.0.1) nor a range (10.0.0.0/8)"
                ))
            })
    }
}

impl serde::Serialize for IpRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for IpRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            master_key_file: PathBuf::new(),
            database_url: String::new(),
            public_url: String::new(),
            max_upload_bytes: 8 * 1024 * 1024 * 1024,
            challenge_ttl_secs: 120,
            ws_heartbeat_secs: 5,
            head_push_secs: 5,
            ws_client_timeout_secs: 20,
            admin_password: None,
            secure_cookies: false,
            log: "info".into(),
            trusted_proxies: Vec::new(),
            trusted_cas: None,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("bind", &self.bind)
            .field("data_dir", &self.data_dir)
            .field("master_key_file", &self.master_key_file())
            .field("database_url", &redact_url(&self.database_url))
            .field("public_url", &self.public_url)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("challenge_ttl_secs", &self.challenge_ttl_secs)
            .field("ws_heartbeat_secs", &self.ws_heartbeat_secs)
            .field("head_push_secs", &self.head_push_secs)
            .field("ws_client_timeout_secs", &self.ws_client_timeout_secs)
            .field(
                "admin_password",
                &self.admin_password.as_ref().map(|_| "<set>"),
            )
            .field("trusted_proxies", &self.trusted_proxies)
            .field("trusted_cas", &self.trusted_cas)
            .finish_non_exhaustive()
    }
}

/// Hides a password in a database URL.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<credentials>{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// `KAIBIAO_*` variables that are no settings: read where they act (forcing the SM4/SM3 paths,
/// `kaibiao admin create-agent`'s password), or by the tests and benches. The server and the
/// commands that load the settings must not refuse them as unknown settings.
const NOT_SETTINGS: &[&str] = &[
    "sm4",
    "sm3",
    "agent_password",
    "test_postgres_url",
    "bench_mib",
    "bench_tmpfs",
    "screenshot",
    "write_corpus",
];

impl Settings {
    /// Defaults, overridden by `file` (if given) and then by `KAIBIAO_*` variables
    /// (`KAIBIAO_BIND`, `KAIBIAO_DATABASE_URL`, …).
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "the config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment
            .merge(Env::prefixed("KAIBIAO_").ignore(NOT_SETTINGS))
            .extract()
            .map_err(|e| ConfigError(e.to_string()))
    }

    /// The master key's file actually used.
    pub fn master_key_file(&self) -> PathBuf {
        if self.master_key_file.as_os_str().is_empty() {
            self.data_dir.join("master.key")
        } else {
            self.master_key_file.clone()
        }
    }

    /// The database URL actually used.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}/kaibiao.db", self.data_dir.display())
        } else {
            self.database_url.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_without_anything() {
        let s = Settings::default();
        assert_eq!(s.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.database_url(), "sqlite://./data/kaibiao.db");
        assert_eq!(s.master_key_file(), Path::new("./data/master.key"));
    }

    #[test]
    fn trusted_proxies_are_addresses_or_ranges() {
        let s: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(
                r#"trusted_proxies = ["127.0.0.1", "10.0.0.0/8", "::1", "::ffff:172.16.0.0/108"]"#,
            ))
            .extract()
            .unwrap();
        let has = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            s.trusted_proxies.iter().any(|r| r.contains(&ip))
        };
        assert!(has("127.0.0.1") && has("10.200.0.3") && has("::1") && has("::ffff:10.0.0.1"));
        assert!(has("172.16.9.9") && has("::ffff:172.16.0.1"));
        assert!(!has("127.0.0.2") && !has("11.0.0.1") && !has("172.32.0.1"));
        let bad = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(r#"trusted_proxies = ["proxy.local"]"#))
            .extract::<Settings>()
            .unwrap_err()
            .to_string();
        assert!(bad.contains("neither an address"), "{bad}");
    }

    #[test]
    fn debug_hides_secrets() {
        let s = Settings {
            database_url: "postgres://u:secret@h/db".into(),
            admin_password: Some("pw".into()),
            ..Settings::default()
        };
        let text = format!("{s:?}");
        assert!(
            !text.contains("secret") && !text.contains("\"pw\""),
            "{text}"
        );
    }
}
