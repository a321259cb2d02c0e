//! Where lost datagrams went, from /proc: the daemon's sockets in `/proc/net/udp` (queue and
//! drops), machine-wide softnet and SNMP UDP counters, and CPU pressure. Parsers are pure.

use serde::Serialize;

/// A UDP socket's row in `/proc/net/udp`.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcUdpSocket {
    pub inode: u64,
    pub rx_queue: u64,
    pub drops: u64,
}

/// The sockets bound to 127.0.0.1:`port` in `/proc/net/udp` text.
pub fn parse_proc_udp_port(text: &str, port: u16) -> Vec<ProcUdpSocket> {
    // The kernel prints the address as the raw (network-order) u32 in hex.
    let local = format!(
        "{:08X}:{port:04X}",
        u32::from_ne_bytes(std::net::Ipv4Addr::LOCALHOST.octets())
    );
    text.lines()
        .skip(1)
        .filter_map(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            let n = cols.len();
            if n < 13 || cols[1] != local {
                return None;
            }
            let rx_queue = cols[4]
                .split_once(':')
                .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())?;
            Some(ProcUdpSocket {
                inode: cols[n - 4].parse().ok()?,
                rx_queue,
                drops: cols[n - 1].parse().ok()?,
            })
        })
        .collect()
}

pub fn proc_udp_port(port: u16) -> Vec<ProcUdpSocket> {
    std::fs::read_to_string("/proc/net/udp")
        .map(|t| parse_proc_udp_port(&t, port))
        .unwrap_or_default()
}

/// Machine-wide counters from /proc that tell where datagrams were lost.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// `/proc/net/softnet_stat`, summed over CPUs: packets dropped because a CPU's backlog queue
    /// (`net.core.netdev_max_backlog`, which loopback traffic goes through) was full; and times
    /// the receive softirq ran out of budget.
    pub softnet_dropped: u64,
    pub softnet_time_squeeze: u64,
    /// `/proc/net/snmp` Udp (this network namespace, all sockets).
    pub udp_in_datagrams: u64,
    pub udp_in_errors: u64,
    pub udp_rcvbuf_errors: u64,
}

impl NetCounters {
    pub fn read() -> Self {
        let mut c = NetCounters::default();
        if let Ok(t) = std::fs::read_to_string("/proc/net/softnet_stat") {
            (c.softnet_dropped, c.softnet_time_squeeze) = parse_softnet(&t);
        }
        if let Ok(t) = std::fs::read_to_string("/proc/net/snmp") {
            let udp = parse_snmp_udp(&t);
            let get = |k: &str| udp.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
            c.udp_in_datagrams = get("InDatagrams");
            c.udp_in_errors = get("InErrors");
            c.udp_rcvbuf_errors = get("RcvbufErrors");
        }
        c
    }

    pub fn since(&self, before: &Self) -> Self {
        NetCounters {
            softnet_dropped: self.softnet_dropped.wrapping_sub(before.softnet_dropped),
            softnet_time_squeeze: self
                .softnet_time_squeeze
                .wrapping_sub(before.softnet_time_squeeze),
            udp_in_datagrams: self.udp_in_datagrams.wrapping_sub(before.udp_in_datagrams),
            udp_in_errors: self.udp_in_errors.wrapping_sub(before.udp_in_errors),
            udp_rcvbuf_errors: self
                .udp_rcvbuf_errors
                .wrapping_sub(before.udp_rcvbuf_errors),
        }
    }
}

/// Sums the `dropped` (2nd) and `time_squeeze` (3rd) hex columns over the CPUs' rows.
pub fn parse_softnet(text: &str) -> (u64, u64) {
    let col = |row: &str, i: usize| {
        row.split_whitespace()
            .nth(i)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .unwrap_or(0)
    };
    text.lines()
        .fold((0, 0), |(d, s), row| (d + col(row, 1), s + col(row, 2)))
}

/// The `Udp:` header and value rows of `/proc/net/snmp`, zipped.
pub fn parse_snmp_udp(text: &str) -> Vec<(String, u64)> {
    let mut rows = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
        return Vec::new();
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
        .collect()
}

/// `some total=` of `/proc/pressure/cpu`: µs during which some task waited for a CPU.
pub fn cpu_pressure_us() -> Option<u64> {
    parse_cpu_pressure(&std::fs::read_to_string("/proc/pressure/cpu").ok()?)
}

pub fn parse_cpu_pressure(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("total="))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_counters() {
        let udp = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
           12: 0100007F:1F99 00000000:0000 07 00000000:00000A00 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
           13: 0100007F:1F99 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 0\n\
           14: 0100007F:1F9A 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 5\n";
        // The rows above spell 127.0.0.1 as a little-endian machine prints it.
        #[cfg(target_endian = "little")]
        assert_eq!(
            parse_proc_udp_port(udp, 0x1F99),
            vec![
                ProcUdpSocket {
                    inode: 4242,
                    rx_queue: 0xA00,
                    drops: 17
                },
                ProcUdpSocket {
                    inode: 4243,
                    rx_queue: 0,
                    drops: 0
                },
            ]
        );
        assert!(parse_proc_udp_port(udp, 1).is_empty());

        let softnet = "0042f072 00000003 00000001 00000000\n005172a5 0000000a 00000000 00000000\n";
        assert_eq!(parse_softnet(softnet), (13, 1));

        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\nUdp: 8974310 0 459053 9433684 459050\nUdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n";
        let udp = parse_snmp_udp(snmp);
        assert_eq!(udp[0], ("InDatagrams".to_string(), 8974310));
        assert_eq!(udp[4], ("RcvbufErrors".to_string(), 459050));
        assert!(parse_snmp_udp("Ip: a\nIp: 1\n").is_empty());

        let psi = "some avg10=32.15 avg60=65.42 avg300=76.56 total=5373067340\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_cpu_pressure(psi), Some(5373067340));
        assert_eq!(parse_cpu_pressure("full total=3\n"), None);
    }
}
