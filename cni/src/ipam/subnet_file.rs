//! The node subnet file (flannel's `subnet.env` idea): the agent writes this node's podCIDR and the
//! cluster network; the plugin reads it on every ADD so a node's subnet needs no CNI config rewrite.
//!
//! ```text
//! KEELSON_NETWORK=10.244.0.0/16   # the whole pod network (never masqueraded)
//! KEELSON_SUBNET=10.244.1.0/24    # this node's podCIDR (host bits are ignored, so 10.244.1.1/24 works too)
//! KEELSON_MTU=1450                # optional: pod MTU (overlay: uplink − 50)
//! KEELSON_IPMASQ=true             # optional
//! ```

use std::path::Path;

use ipnet::Ipv4Net;

use super::IpamError;

/// Parsed subnet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetFile {
    pub network: Option<Ipv4Net>,
    pub subnet: Ipv4Net,
    pub mtu: Option<u32>,
    pub ip_masq: Option<bool>,
}

impl SubnetFile {
    pub fn read(path: &Path) -> Result<SubnetFile, IpamError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| IpamError::SubnetFile { path: path.to_path_buf(), reason: e.to_string() })?;
        Self::parse(&text).map_err(|reason| IpamError::SubnetFile { path: path.to_path_buf(), reason })
    }

    /// Parses `KEY=VALUE` lines; `#` comments and blank lines are ignored, unknown keys too.
    pub fn parse(text: &str) -> Result<SubnetFile, String> {
        let (mut network, mut subnet, mut mtu, mut ip_masq) = (None, None, None, None);
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| format!("line {}: expected KEY=VALUE", n + 1))?;
            let v = v.trim().trim_matches('"');
            let bad = |what: &str| format!("line {}: invalid {what} {v:?}", n + 1);
            match k.trim() {
                "KEELSON_NETWORK" => network = Some(v.parse::<Ipv4Net>().map_err(|_| bad("network"))?.trunc()),
                "KEELSON_SUBNET" => subnet = Some(v.parse::<Ipv4Net>().map_err(|_| bad("subnet"))?.trunc()),
                "KEELSON_MTU" => mtu = Some(v.parse::<u32>().map_err(|_| bad("mtu"))?),
                "KEELSON_IPMASQ" => ip_masq = Some(v.parse::<bool>().map_err(|_| bad("ipmasq"))?),
                _ => {}
            }
        }
        let subnet = subnet.ok_or("KEELSON_SUBNET is missing")?;
        if let Some(net) = network
            && !net.contains(&subnet)
        {
            return Err(format!("subnet {subnet} is not inside network {net}"));
        }
        Ok(SubnetFile { network, subnet, mtu, ip_masq })
    }

    /// Writes the file atomically (temporary file + rename), creating the parent directory: a
    /// plugin reading concurrently sees the old or the new subnet, never a torn file.
    pub fn write(&self, path: &Path) -> Result<(), IpamError> {
        let err = |e: std::io::Error| IpamError::SubnetFile { path: path.to_path_buf(), reason: e.to_string() };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, self.render()).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Renders the file (what the agent writes).
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(n) = self.network {
            s.push_str(&format!("KEELSON_NETWORK={n}\n"));
        }
        s.push_str(&format!("KEELSON_SUBNET={}\n", self.subnet));
        if let Some(m) = self.mtu {
            s.push_str(&format!("KEELSON_MTU={m}\n"));
        }
        if let Some(m) = self.ip_masq {
            s.push_str(&format!("KEELSON_IPMASQ={m}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let f = SubnetFile::parse("# written by keelson-agent\nKEELSON_NETWORK=10.244.0.0/16\nKEELSON_SUBNET=10.244.1.1/24\nKEELSON_MTU=1450\nKEELSON_IPMASQ=true\nOTHER=1\n").unwrap();
        assert_eq!(f.subnet, "10.244.1.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(f.mtu, Some(1450));
        assert_eq!(f.ip_masq, Some(true));
        assert_eq!(SubnetFile::parse(&f.render()).unwrap(), f);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run/keelson/subnet.env");
        f.write(&p).unwrap();
        assert_eq!(SubnetFile::read(&p).unwrap(), f);
    }

    #[test]
    fn rejects_bad_files() {
        assert!(SubnetFile::parse("KEELSON_NETWORK=10.0.0.0/8\n").unwrap_err().contains("missing"));
        assert!(SubnetFile::parse("KEELSON_SUBNET=10.300.0.0/24").unwrap_err().contains("invalid subnet"));
        assert!(SubnetFile::parse("garbage").is_err());
        assert!(
            SubnetFile::parse("KEELSON_NETWORK=10.0.0.0/16\nKEELSON_SUBNET=10.1.0.0/24")
                .unwrap_err()
                .contains("not inside")
        );
        let e = SubnetFile::read(Path::new("/nonexistent/keelson/subnet.env")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/keelson/subnet.env"));
    }
}
