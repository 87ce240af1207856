//! The SQL of usage analytics and rate-limit windows (migration 0013), stamped into each
//! backend by `impl_store!` as inherent methods (`db_usage_*`, which the `Store` implementation
//! calls). Counts are added, never overwritten (`count = table.count + excluded.count`), so the
//! flushes of several nodes merge into one row per bucket.

/// Rows per statement of a batched upsert (7 parameters each, well under both databases'
/// parameter limits).
pub const USAGE_BATCH: usize = 500;

/// `WHERE` clauses and their text parameters for a usage filter, numbered from `$3` (`$1` and
/// `$2` are the bucket range).
pub fn usage_where(f: &keyplane_core::store::UsageFilter) -> (String, Vec<String>, Option<i16>) {
    let mut sql = String::from("bucket >= $1 AND bucket < $2");
    let mut params = Vec::new();
    for (col, v) in [
        ("org_id", &f.org_id),
        ("project_id", &f.project_id),
        ("credential_id", &f.credential_id),
        ("service", &f.service),
    ] {
        if let Some(v) = v {
            params.push(v.clone());
            sql.push_str(&format!(" AND {col} = ${}", params.len() + 2));
        }
    }
    let outcome = f.outcome.map(|o| o.code());
    if outcome.is_some() {
        sql.push_str(&format!(" AND outcome = ${}", params.len() + 3));
    }
    (sql, params, outcome)
}

macro_rules! usage_store {
    ($row:ty, $conn:ty) => {
        async fn db_usage_add(&self, counts: &[UsageCount]) -> Result<()> {
            if counts.is_empty() {
                return Ok(());
            }
            // Hours are summed here first: one row per hour, not one per minute.
            let mut hours: HashMap<(i64, &str, &str, &str, i16, &str), u64> = HashMap::new();
            for c in counts {
                *hours
                    .entry((
                        c.minute.div_euclid(60),
                        &c.org_id,
                        &c.credential_id,
                        &c.service,
                        c.outcome.code(),
                        &c.project_id,
                    ))
                    .or_default() += c.count;
            }
            let minutes: Vec<_> = counts
                .iter()
                .map(|c| {
                    (
                        c.minute,
                        c.org_id.as_str(),
                        c.credential_id.as_str(),
                        c.service.as_str(),
                        c.outcome.code(),
                        c.project_id.as_str(),
                        c.count,
                    )
                })
                .collect();
            let hours: Vec<_> = hours
                .into_iter()
                .map(|((b, o, c, s, oc, p), n)| (b, o, c, s, oc, p, n))
                .collect();
            let mut tx = self.w().begin().await.map_err(db_err)?;
            for (table, rows) in [("usage_minutes", &minutes), ("usage_hours", &hours)] {
                for chunk in rows.chunks(crate::usage::USAGE_BATCH) {
                    let values: Vec<String> = (0..chunk.len())
                        .map(|i| {
                            let b = i * 7;
                            format!(
                                "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                                b + 1,
                                b + 2,
                                b + 3,
                                b + 4,
                                b + 5,
                                b + 6,
                                b + 7
                            )
                        })
                        .collect();
                    let sql = format!(
                        "INSERT INTO {table} (bucket, org_id, credential_id, service, outcome, project_id, count) \
                         VALUES {} ON CONFLICT (org_id, bucket, credential_id, service, outcome) \
                         DO UPDATE SET count = {table}.count + excluded.count",
                        values.join(", ")
                    );
                    let mut q = sqlx::query(&sql);
                    for r in chunk {
                        q = q
                            .bind(r.0)
                            .bind(r.1)
                            .bind(r.2)
                            .bind(r.3)
                            .bind(r.4)
                            .bind(r.5)
                            .bind(i64::try_from(r.6).unwrap_or(i64::MAX));
                    }
                    q.execute(&mut *tx).await.map_err(db_err)?;
                }
            }
            tx.commit().await.map_err(db_err)
        }

        async fn db_usage_series(
            &self,
            filter: &UsageFilter,
            granularity: Granularity,
            first: i64,
            end: i64,
        ) -> Result<Vec<(i64, UsageOutcome, u64)>> {
            let table = match granularity {
                Granularity::Minute => "usage_minutes",
                Granularity::Hour => "usage_hours",
            };
            let (cond, params, outcome) = crate::usage::usage_where(filter);
            let sql = format!(
                "SELECT bucket, outcome, CAST(SUM(count) AS BIGINT) AS n FROM {table} WHERE {cond} \
                 GROUP BY bucket, outcome ORDER BY bucket"
            );
            let mut q = sqlx::query(&sql).bind(first).bind(end);
            for p in &params {
                q = q.bind(p);
            }
            if let Some(o) = outcome {
                q = q.bind(o);
            }
            let rows = q.fetch_all(self.r()).await.map_err(db_err)?;
            rows.iter()
                .map(|r| {
                    let code: i16 = r.try_get("outcome").map_err(db_err)?;
                    let n: i64 = r.try_get("n").map_err(db_err)?;
                    Ok((
                        r.try_get("bucket").map_err(db_err)?,
                        UsageOutcome::from_code(i64::from(code)).ok_or_else(|| corrupt("usage outcome"))?,
                        u64::try_from(n).unwrap_or(0),
                    ))
                })
                .collect()
        }

        async fn db_usage_top(
            &self,
            filter: &UsageFilter,
            first: i64,
            end: i64,
            by_refusals: bool,
            limit: i64,
        ) -> Result<Vec<CredentialTotals>> {
            let (cond, params, outcome) = crate::usage::usage_where(filter);
            let order = if by_refusals { "refusals" } else { "requests" };
            let sql = format!(
                "SELECT credential_id, MIN(org_id) AS org_id, MIN(project_id) AS project_id, \
                 CAST(SUM(count) AS BIGINT) AS requests, \
                 CAST(SUM(CASE WHEN outcome <> 0 THEN count ELSE 0 END) AS BIGINT) AS refusals \
                 FROM usage_hours WHERE {cond} AND credential_id <> '' \
                 GROUP BY credential_id ORDER BY {order} DESC, credential_id LIMIT {limit}"
            );
            let mut q = sqlx::query(&sql).bind(first).bind(end);
            for p in &params {
                q = q.bind(p);
            }
            if let Some(o) = outcome {
                q = q.bind(o);
            }
            let rows = q.fetch_all(self.r()).await.map_err(db_err)?;
            rows.iter()
                .map(|r| {
                    let requests: i64 = r.try_get("requests").map_err(db_err)?;
                    let refusals: i64 = r.try_get("refusals").map_err(db_err)?;
                    Ok(CredentialTotals {
                        credential_id: r.try_get("credential_id").map_err(db_err)?,
                        org_id: r.try_get("org_id").map_err(db_err)?,
                        project_id: r.try_get("project_id").map_err(db_err)?,
                        requests: u64::try_from(requests).unwrap_or(0),
                        refusals: u64::try_from(refusals).unwrap_or(0),
                    })
                })
                .filter(|t: &Result<CredentialTotals>| !matches!(t, Ok(t) if by_refusals && t.refusals == 0))
                .collect()
        }

        async fn db_usage_purge(&self, minute: i64, hour: i64) -> Result<u64> {
            let a = sqlx::query("DELETE FROM usage_minutes WHERE bucket < $1")
                .bind(minute)
                .execute(self.w())
                .await
                .map_err(db_err)?
                .rows_affected();
            let b = sqlx::query("DELETE FROM usage_hours WHERE bucket < $1")
                .bind(hour)
                .execute(self.w())
                .await
                .map_err(db_err)?
                .rows_affected();
            Ok(a + b)
        }

        async fn db_rate_windows_add(&self, counts: &[(String, i64, i64, u64)]) -> Result<()> {
            if counts.is_empty() {
                return Ok(());
            }
            let mut tx = self.w().begin().await.map_err(db_err)?;
            for (counter, start, end, n) in counts {
                sqlx::query(
                    "INSERT INTO rate_limit_windows (counter, window_start, window_end, count) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (counter, window_start) DO UPDATE SET count = rate_limit_windows.count + excluded.count",
                )
                .bind(counter)
                .bind(start)
                .bind(end)
                .bind(i64::try_from(*n).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)
        }

        async fn db_rate_windows_live(&self, now_ms: i64) -> Result<Vec<(String, i64, u64)>> {
            let rows = sqlx::query(
                "SELECT counter, window_start, count FROM rate_limit_windows WHERE window_end > $1",
            )
            .bind(now_ms)
            .fetch_all(self.r())
            .await
            .map_err(db_err)?;
            rows.iter()
                .map(|r| {
                    let n: i64 = r.try_get("count").map_err(db_err)?;
                    Ok((
                        r.try_get("counter").map_err(db_err)?,
                        r.try_get("window_start").map_err(db_err)?,
                        u64::try_from(n).unwrap_or(0),
                    ))
                })
                .collect()
        }

        async fn db_rate_windows_purge(&self, now_ms: i64) -> Result<u64> {
            Ok(sqlx::query("DELETE FROM rate_limit_windows WHERE window_end < $1")
                .bind(now_ms)
                .execute(self.w())
                .await
                .map_err(db_err)?
                .rows_affected())
        }
    };
}
