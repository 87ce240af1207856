//! Rate limits shared across nodes through Redis: every `sync_interval_ms` each node adds the
//! units it counted since the last round to one Redis counter per (limit, window) — `INCRBY`
//! and `PEXPIRE`, pipelined, one round trip for every counter — and adopts the totals as what
//! the other nodes counted. Decisions stay node-local (no round trip on a request), so the
//! deployment can pass a limit by what the other nodes allow within one round; BENCHMARKS.md
//! measures it.
//!
//! The client is a minimal RESP2 one over a plain TCP connection (`redis://[:password@]host[:port][/db]`):
//! keyplane sends three commands (`AUTH`, `SELECT`, and the pipelined `INCRBY`/`PEXPIRE`) and
//! reads integers, which does not justify a client library and its dependencies.

use anyhow::{bail, Context, Result};
use keyplane_core::Keyplane;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Where Redis is and how to sign in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub addr: String,
    pub password: Option<String>,
    pub db: u32,
}

impl RedisTarget {
    pub fn parse(url: &str) -> Result<Self> {
        let Some(rest) = url.strip_prefix("redis://") else {
            bail!("rate_limits.redis_url must be redis://[:password@]host[:port][/db] (TLS is not supported)");
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, d)) if !d.is_empty() => {
                (h, d.parse().context("the Redis database must be a number")?)
            }
            Some((h, _)) => (h, 0),
            None => (rest, 0),
        };
        if hostport.is_empty() {
            bail!("rate_limits.redis_url names no host");
        }
        let addr = if hostport
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            hostport.to_string()
        } else {
            format!("{hostport}:6379")
        };
        let password = auth
            .map(|a| a.rsplit_once(':').map_or(a, |(_, p)| p).to_string())
            .filter(|p| !p.is_empty());
        Ok(Self { addr, password, db })
    }
}

/// One connection, commands written as RESP arrays and integer replies read back.
struct Conn {
    stream: BufReader<TcpStream>,
}

fn command(buf: &mut Vec<u8>, parts: &[&[u8]]) {
    buf.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for p in parts {
        buf.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
        buf.extend_from_slice(p);
        buf.extend_from_slice(b"\r\n");
    }
}

impl Conn {
    async fn open(t: &RedisTarget) -> Result<Self> {
        let tcp = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&t.addr))
            .await
            .context("timed out connecting to Redis")??;
        tcp.set_nodelay(true)?;
        let mut c = Conn {
            stream: BufReader::new(tcp),
        };
        let mut buf = Vec::new();
        let mut replies = 0;
        if let Some(p) = &t.password {
            command(&mut buf, &[b"AUTH", p.as_bytes()]);
            replies += 1;
        }
        if t.db != 0 {
            command(&mut buf, &[b"SELECT", t.db.to_string().as_bytes()]);
            replies += 1;
        }
        if replies > 0 {
            c.stream.get_mut().write_all(&buf).await?;
            for _ in 0..replies {
                c.reply().await?;
            }
        }
        Ok(c)
    }

    /// One reply: an integer (`:n`), a status (`+OK`, as 0), or an error.
    async fn reply(&mut self) -> Result<i64> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            bail!("Redis closed the connection");
        }
        let line = line.trim_end();
        match line.as_bytes().first() {
            Some(b':') => Ok(line[1..].parse()?),
            Some(b'+') => Ok(0),
            Some(b'-') => bail!("Redis: {}", &line[1..]),
            Some(b'$') => {
                // A bulk string (not expected): skip it.
                let n: i64 = line[1..].parse()?;
                if n >= 0 {
                    let mut skip = vec![0; n as usize + 2];
                    self.stream.read_exact(&mut skip).await?;
                }
                Ok(0)
            }
            _ => bail!("unexpected Redis reply"),
        }
    }

    /// Adds each delta to its key, sets its expiry, and returns each key's total.
    async fn add_all(&mut self, items: &[(String, u64, u64)]) -> Result<Vec<u64>> {
        let mut buf = Vec::with_capacity(items.len() * 96);
        for (key, delta, ttl_ms) in items {
            command(
                &mut buf,
                &[b"INCRBY", key.as_bytes(), delta.to_string().as_bytes()],
            );
            command(
                &mut buf,
                &[b"PEXPIRE", key.as_bytes(), ttl_ms.to_string().as_bytes()],
            );
        }
        self.stream.get_mut().write_all(&buf).await?;
        let mut totals = Vec::with_capacity(items.len());
        for _ in items {
            totals.push(u64::try_from(self.reply().await?).unwrap_or(0));
            self.reply().await?;
        }
        Ok(totals)
    }
}

/// This node's units already sent, per (counter, window): what it subtracts from a total.
type Sent = std::collections::HashMap<(Arc<str>, i64), u64>;

/// Runs the reconciliation until the task is aborted. Connection failures are logged (once
/// per outage) and retried; meanwhile every node decides on its own counts.
pub async fn run(app: Arc<Keyplane>, target: RedisTarget, every: Duration) {
    let mut conn: Option<Conn> = None;
    let mut sent: Sent = Sent::new();
    let mut failing = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match round(&app, &target, &mut conn, &mut sent).await {
            Ok(()) => {
                if failing {
                    tracing::info!("rate limits: Redis is reachable again");
                    failing = false;
                }
            }
            Err(e) => {
                conn = None;
                if !failing {
                    tracing::warn!(error = %e, "rate limits: cannot reach Redis; each node counts alone until it is back");
                    failing = true;
                }
            }
        }
    }
}

async fn round(
    app: &Keyplane,
    target: &RedisTarget,
    conn: &mut Option<Conn>,
    sent: &mut Sent,
) -> Result<()> {
    let mut deltas: std::collections::HashMap<(Arc<str>, i64), u64> = app
        .rate_limit_deltas()
        .into_iter()
        .map(|(k, w, _, n)| ((k, w), n))
        .collect();
    // Every counter's current window is read (INCRBY 0 answers the total), so a node learns
    // what the others counted even before it counts anything itself.
    let windows = app.rate_limit_windows();
    if windows.is_empty() && deltas.is_empty() {
        return Ok(());
    }
    let mut items = Vec::with_capacity(windows.len() + deltas.len());
    let mut meta = Vec::with_capacity(windows.len() + deltas.len());
    for (key, w, window_ms, _) in &windows {
        let n = deltas.remove(&(Arc::clone(key), *w)).unwrap_or(0);
        items.push((
            format!("keyplane:rl:{key}:{w}"),
            n,
            (*window_ms as u64) + 5_000,
        ));
        meta.push((Arc::clone(key), *w, *window_ms, n, true));
    }
    // Units of a window that has just ended are still sent (so the totals are right), but
    // there is nothing to adopt for them.
    for ((key, w), n) in deltas {
        items.push((format!("keyplane:rl:{key}:{w}"), n, 5_000));
        meta.push((key, w, 0, n, false));
    }
    if conn.is_none() {
        *conn = Some(Conn::open(target).await?);
    }
    let c = conn.as_mut().context("no Redis connection")?;
    let totals = tokio::time::timeout(Duration::from_secs(2), c.add_all(&items))
        .await
        .context("timed out waiting for Redis")??;
    let mut next = Sent::new();
    for ((key, w, window_ms, n, current), total) in meta.into_iter().zip(totals) {
        let mine = sent.get(&(Arc::clone(&key), w)).copied().unwrap_or(0) + n;
        if current {
            app.rate_limit_adopt(&key, w, window_ms, total, mine);
            next.insert((key, w), mine);
        }
    }
    *sent = next;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::RedisTarget;

    #[test]
    fn urls() {
        let t = RedisTarget::parse("redis://127.0.0.1:6379").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.password, t.db),
            ("127.0.0.1:6379", None, 0)
        );
        let t = RedisTarget::parse("redis://:s3cret@cache/2").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.password.as_deref(), t.db),
            ("cache:6379", Some("s3cret"), 2)
        );
        assert!(RedisTarget::parse("rediss://x").is_err());
        assert!(RedisTarget::parse("redis:///0").is_err());
    }
}
