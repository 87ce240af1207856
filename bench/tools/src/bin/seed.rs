//! Writes active API keys straight into a keyplane database (already migrated by a first
//! `keyplane serve`), hashed exactly as keyplane hashes them (HMAC-SHA256 under the pepper,
//! `keyplane_core::domain::secret::Pepper`), far faster than one management call per key.
//!
//! `seed DATABASE_URL PEPPER COUNT SCOPE KEYS_OUT [EVERY]`: adds COUNT keys with SCOPE to the
//! default organization and writes every EVERY-th secret (default 1: all) to KEYS_OUT, one a line.

use keyplane_core::domain::secret::{Pepper, SecretFormat};
use std::io::Write;

const BATCH: usize = 1_000;

/// One batch of keys per transaction, the same SQL on both backends (`QueryBuilder` numbers
/// the parameters for each).
macro_rules! seed_with {
    ($pool:expr, $db:ty, $count:expr, $every:expr, $run:expr, $scopes:expr, $format:expr, $pepper:expr, $out:expr) => {{
        let mut done = 0usize;
        while done < $count {
            let n = BATCH.min($count - done);
            let rows: Vec<(String, String, Vec<u8>)> = (done..done + n)
                .map(|i| {
                    let secret = $format.generate();
                    let secret = secret.expose().to_string();
                    if i % $every == 0 {
                        writeln!($out, "{secret}").expect("write KEYS_OUT");
                    }
                    let digest = $pepper.digest(&secret).0.to_vec();
                    (format!("key_bench{}_{i}", $run), secret, digest)
                })
                .collect();
            let mut tx = $pool.begin().await.expect("begin");
            let mut q = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO api_keys (id, org_id, project_id, name, description, scopes, roles, \
                 start, created_at, created_by, is_active) ",
            );
            q.push_values(&rows, |mut b, (id, secret, _)| {
                b.push_bind(id.clone())
                    .push_bind("org_default")
                    .push_bind("prj_default")
                    .push_bind(id.clone())
                    .push_bind("")
                    .push_bind($scopes.clone())
                    .push_bind("[]")
                    .push_bind(secret[..10].to_string())
                    .push_bind($run)
                    .push_bind("bench")
                    .push_bind(true);
            });
            q.build().execute(&mut *tx).await.expect("insert keys");
            let mut q = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO api_key_secrets (digest, key_id, pepper_version, created_at) ",
            );
            q.push_values(&rows, |mut b, (id, _, digest)| {
                b.push_bind(digest.clone())
                    .push_bind(id.clone())
                    .push_bind(1i32)
                    .push_bind($run);
            });
            q.build().execute(&mut *tx).await.expect("insert secrets");
            tx.commit().await.expect("commit");
            done += n;
        }
    }};
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: seed DATABASE_URL PEPPER COUNT SCOPE KEYS_OUT [EVERY]");
        std::process::exit(2);
    }
    let (url, pepper, scope, out) = (&args[1], &args[2], &args[4], &args[5]);
    let count: usize = args[3].parse().expect("COUNT is a number");
    let every: usize = args
        .get(6)
        .map_or(1, |e| e.parse().expect("EVERY is a number"));
    let pepper = Pepper::new(1, pepper.as_bytes()).expect("a valid pepper");
    let format = SecretFormat::new("kp_").expect("the default prefix");
    let mut out = std::io::BufWriter::new(std::fs::File::create(out).expect("create KEYS_OUT"));
    let scopes = format!("[\"{scope}\"]");
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let pg = url.starts_with("postgres");
    let started = std::time::Instant::now();
    if pg {
        let pool = sqlx::PgPool::connect(url).await.expect("connect");
        seed_with!(
            pool,
            sqlx::Postgres,
            count,
            every,
            run,
            scopes,
            format,
            pepper,
            out
        );
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.expect("connect");
        seed_with!(
            pool,
            sqlx::Sqlite,
            count,
            every,
            run,
            scopes,
            format,
            pepper,
            out
        );
    }
    out.flush().expect("write KEYS_OUT");
    eprintln!(
        "seeded {count} keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
