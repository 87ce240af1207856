//! The SQL of webhooks and notices (migration 0014), stamped into each backend by
//! `impl_store!` like `authcode.rs`: [`webhook_store!`] as inherent methods (`wh_*`, which the
//! `Store` implementation calls), with [`webhook_outbox_in`], which `append_in` calls for every
//! event so a delivery is queued in the event's own transaction. `$skip` is what a claim's
//! row lock adds (PostgreSQL: ` FOR UPDATE SKIP LOCKED`; SQLite has one writer).

macro_rules! webhook_store {
    ($row:ty, $conn:ty, $backend:literal, $lock:literal, $skip:literal) => {
        fn endpoint_row(r: &$row) -> Result<Endpoint> {
            let version: i64 = r.try_get("pepper_version").map_err(db_err)?;
            Ok(Endpoint {
                id: r.try_get("id").map_err(db_err)?,
                org_id: r.try_get("org_id").map_err(db_err)?,
                project_id: r.try_get("project_id").map_err(db_err)?,
                url: r.try_get("url").map_err(db_err)?,
                description: r.try_get("description").map_err(db_err)?,
                events: from_json(&r.try_get::<String, _>("events").map_err(db_err)?)?,
                enabled: r.try_get("enabled").map_err(db_err)?,
                disabled_reason: r.try_get("disabled_reason").map_err(db_err)?,
                secret_sealed: r.try_get("secret_sealed").map_err(db_err)?,
                pepper_version: u32::try_from(version).map_err(|_| corrupt("pepper_version"))?,
                previous_sealed: r.try_get("previous_sealed").map_err(db_err)?,
                previous_until: opt_time(r.try_get("previous_until").map_err(db_err)?),
                created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                updated_at: from_ms(r.try_get("updated_at").map_err(db_err)?),
                failing_since: opt_time(r.try_get("failing_since").map_err(db_err)?),
            })
        }

        fn delivery_row(r: &$row) -> Result<Delivery> {
            let state: String = r.try_get("state").map_err(db_err)?;
            Ok(Delivery {
                id: r.try_get("id").map_err(db_err)?,
                endpoint_id: r.try_get("endpoint_id").map_err(db_err)?,
                org_id: r.try_get("org_id").map_err(db_err)?,
                event_id: r.try_get("event_id").map_err(db_err)?,
                event_type: r.try_get("event_type").map_err(db_err)?,
                payload: r.try_get("payload").map_err(db_err)?,
                created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                state: DeliveryState::parse(&state).ok_or_else(|| corrupt("delivery state"))?,
                attempts: r.try_get("attempts").map_err(db_err)?,
                next_attempt_at: from_ms(r.try_get("next_attempt_at").map_err(db_err)?),
                last_status: r.try_get("last_status").map_err(db_err)?,
                last_error: r.try_get("last_error").map_err(db_err)?,
                delivered_at: opt_time(r.try_get("delivered_at").map_err(db_err)?),
            })
        }

        fn attempt_row(r: &$row) -> Result<Attempt> {
            Ok(Attempt {
                delivery_id: r.try_get("delivery_id").map_err(db_err)?,
                endpoint_id: r.try_get("endpoint_id").map_err(db_err)?,
                at: from_ms(r.try_get("at").map_err(db_err)?),
                duration_ms: r.try_get("duration_ms").map_err(db_err)?,
                status: r.try_get("status").map_err(db_err)?,
                error: r.try_get("error").map_err(db_err)?,
            })
        }

        /// Queues the event for every enabled endpoint of its organization (and project) with
        /// a matching pattern, inside the transaction that appends it. On PostgreSQL the
        /// nodes' delivery workers are woken at commit.
        async fn webhook_outbox_in(conn: &mut $conn, e: &NewEvent) -> Result<()> {
            let (Some(org_id), Some(payload)) = (e.org_id.as_deref(), webhook::payload(e)) else {
                return Ok(());
            };
            let prefix = format!("msg_{}_", e.id.strip_prefix("evt_").unwrap_or(&e.id));
            let queued = sqlx::query(
                "INSERT INTO webhook_deliveries (id, endpoint_id, org_id, event_id, event_type, payload, created_at, \
                 state, attempts, next_attempt_at) \
                 SELECT $1 || w.id, w.id, w.org_id, $2, $3, $4, $5, 'pending', 0, $5 FROM webhook_endpoints w \
                 WHERE w.org_id = $6 AND w.enabled AND (w.project_id IS NULL OR w.project_id = $7) \
                 AND EXISTS (SELECT 1 FROM webhook_subscriptions s WHERE s.endpoint_id = w.id AND \
                 (s.pattern = '*' OR s.pattern = $3 OR (s.pattern LIKE '%.*' AND \
                 substr($3, 1, length(s.pattern) - 1) = substr(s.pattern, 1, length(s.pattern) - 1)))) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&prefix)
            .bind(&e.id)
            .bind(&e.action)
            .bind(&payload)
            .bind(to_ms(e.at))
            .bind(org_id)
            .bind(webhook::event_project(&e.details))
            .execute(&mut *conn)
            .await
            .map_err(db_err)?
            .rows_affected();
            if queued > 0 && $backend == "postgres" {
                sqlx::query("SELECT pg_notify($1, 'webhooks')")
                    .bind(NOTIFY_CHANNEL)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err)?;
            }
            Ok(())
        }

        async fn subscriptions_in(conn: &mut $conn, endpoint: &Endpoint) -> Result<()> {
            sqlx::query("DELETE FROM webhook_subscriptions WHERE endpoint_id = $1")
                .bind(&endpoint.id)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
            for p in &endpoint.events {
                sqlx::query("INSERT INTO webhook_subscriptions (endpoint_id, pattern) VALUES ($1, $2)")
                    .bind(&endpoint.id)
                    .bind(p)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err)?;
            }
            Ok(())
        }

        async fn wh_create(&self, ep: &Endpoint, limit: usize, event: &NewEvent) -> Result<()> {
            let mut tx = self.w().begin().await.map_err(db_err)?;
            // Lock the organization's row so concurrent creations count each other.
            sqlx::query(concat!("SELECT id FROM orgs WHERE id = $1", $lock))
                .bind(&ep.org_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            let n: i64 = sqlx::query("SELECT COUNT(*) FROM webhook_endpoints WHERE org_id = $1")
                .bind(&ep.org_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?
                .try_get(0)
                .map_err(db_err)?;
            if n >= limit as i64 {
                return Err(Error::LimitExceeded(format!(
                    "an organization may have at most {limit} webhook endpoints"
                )));
            }
            sqlx::query(
                "INSERT INTO webhook_endpoints (id, org_id, project_id, url, description, events, enabled, \
                 disabled_reason, secret_sealed, pepper_version, previous_sealed, previous_until, created_at, \
                 updated_at, failing_since) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            )
            .bind(&ep.id)
            .bind(&ep.org_id)
            .bind(&ep.project_id)
            .bind(&ep.url)
            .bind(&ep.description)
            .bind(to_json(&ep.events))
            .bind(ep.enabled)
            .bind(&ep.disabled_reason)
            .bind(&ep.secret_sealed)
            .bind(i64::from(ep.pepper_version))
            .bind(&ep.previous_sealed)
            .bind(ep.previous_until.map(to_ms))
            .bind(to_ms(ep.created_at))
            .bind(to_ms(ep.updated_at))
            .bind(ep.failing_since.map(to_ms))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            Self::subscriptions_in(&mut tx, ep).await?;
            Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
            tx.commit().await.map_err(db_err)
        }

        async fn wh_get(&self, id: &str) -> Result<Option<Endpoint>> {
            let row = sqlx::query("SELECT * FROM webhook_endpoints WHERE id = $1")
                .bind(id)
                .fetch_optional(self.r())
                .await
                .map_err(db_err)?;
            row.map(|r| Self::endpoint_row(&r)).transpose()
        }

        async fn wh_list(&self, org_id: &str) -> Result<Vec<Endpoint>> {
            let rows = sqlx::query("SELECT * FROM webhook_endpoints WHERE org_id = $1 ORDER BY created_at, id")
                .bind(org_id)
                .fetch_all(self.r())
                .await
                .map_err(db_err)?;
            rows.iter().map(Self::endpoint_row).collect()
        }

        async fn wh_update(&self, ep: &Endpoint, event: &NewEvent) -> Result<()> {
            let mut tx = self.w().begin().await.map_err(db_err)?;
            let n = sqlx::query(
                "UPDATE webhook_endpoints SET url = $2, description = $3, events = $4, enabled = $5, \
                 disabled_reason = $6, secret_sealed = $7, pepper_version = $8, previous_sealed = $9, \
                 previous_until = $10, updated_at = $11, failing_since = $12 WHERE id = $1",
            )
            .bind(&ep.id)
            .bind(&ep.url)
            .bind(&ep.description)
            .bind(to_json(&ep.events))
            .bind(ep.enabled)
            .bind(&ep.disabled_reason)
            .bind(&ep.secret_sealed)
            .bind(i64::from(ep.pepper_version))
            .bind(&ep.previous_sealed)
            .bind(ep.previous_until.map(to_ms))
            .bind(to_ms(ep.updated_at))
            .bind(ep.failing_since.map(to_ms))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
            if n == 0 {
                return Err(Error::NotFound("webhook"));
            }
            Self::subscriptions_in(&mut tx, ep).await?;
            Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
            tx.commit().await.map_err(db_err)
        }

        async fn wh_delete(&self, id: &str, event: &NewEvent) -> Result<bool> {
            let mut tx = self.w().begin().await.map_err(db_err)?;
            for sql in [
                "DELETE FROM webhook_attempts WHERE endpoint_id = $1",
                "DELETE FROM webhook_deliveries WHERE endpoint_id = $1",
                "DELETE FROM webhook_subscriptions WHERE endpoint_id = $1",
            ] {
                sqlx::query(sql).bind(id).execute(&mut *tx).await.map_err(db_err)?;
            }
            let n = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
            if n == 0 {
                return Ok(false);
            }
            Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
            tx.commit().await.map_err(db_err)?;
            Ok(true)
        }

        async fn wh_deliveries(
            &self,
            endpoint_id: &str,
            before_ms: Option<i64>,
            limit: i64,
        ) -> Result<Vec<(Delivery, Vec<Attempt>)>> {
            let rows = sqlx::query(
                "SELECT * FROM webhook_deliveries WHERE endpoint_id = $1 AND created_at < $2 \
                 ORDER BY created_at DESC, id DESC LIMIT $3",
            )
            .bind(endpoint_id)
            .bind(before_ms.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(self.r())
            .await
            .map_err(db_err)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let d = Self::delivery_row(r)?;
                let attempts = sqlx::query(
                    "SELECT * FROM webhook_attempts WHERE delivery_id = $1 ORDER BY at DESC LIMIT 50",
                )
                .bind(&d.id)
                .fetch_all(self.r())
                .await
                .map_err(db_err)?
                .iter()
                .map(Self::attempt_row)
                .collect::<Result<Vec<_>>>()?;
                out.push((d, attempts));
            }
            Ok(out)
        }

        async fn wh_redeliver(
            &self,
            endpoint_id: &str,
            delivery_id: &str,
            now: OffsetDateTime,
            event: &NewEvent,
        ) -> Result<bool> {
            let mut tx = self.w().begin().await.map_err(db_err)?;
            let n = sqlx::query(
                "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $3, \
                 lease_until = NULL WHERE id = $1 AND endpoint_id = $2",
            )
            .bind(delivery_id)
            .bind(endpoint_id)
            .bind(to_ms(now))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
            if n == 0 {
                return Ok(false);
            }
            Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
            tx.commit().await.map_err(db_err)?;
            Ok(true)
        }

        async fn wh_purge(&self, before: OffsetDateTime) -> Result<u64> {
            let mut tx = self.w().begin().await.map_err(db_err)?;
            sqlx::query(
                "DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries \
                 WHERE state <> 'pending' AND created_at < $1)",
            )
            .bind(to_ms(before))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            let n = sqlx::query("DELETE FROM webhook_deliveries WHERE state <> 'pending' AND created_at < $1")
                .bind(to_ms(before))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
            tx.commit().await.map_err(db_err)?;
            Ok(n)
        }

        async fn wh_due(&self, now: OffsetDateTime) -> Result<bool> {
            let row = sqlx::query(
                "SELECT 1 FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id \
                 WHERE d.state = 'pending' AND d.next_attempt_at <= $1 \
                 AND (d.lease_until IS NULL OR d.lease_until <= $1) AND w.enabled LIMIT 1",
            )
            .bind(to_ms(now))
            .fetch_optional(self.r())
            .await
            .map_err(db_err)?;
            Ok(row.is_some())
        }

        async fn wh_claim(
            &self,
            now: OffsetDateTime,
            lease_until: OffsetDateTime,
            limit: i64,
        ) -> Result<Vec<(Delivery, Endpoint)>> {
            // At most `PER_ENDPOINT` deliveries of one endpoint are in flight (or claimed) at
            // once: its pending deliveries are ranked, leased ones included, and only the first
            // few may be taken, so an endpoint that hangs cannot hold every sender.
            let ids: Vec<String> = sqlx::query(concat!(
                "UPDATE webhook_deliveries SET lease_until = $2, attempts = attempts + 1 WHERE id IN (\
                 SELECT d.id FROM webhook_deliveries d WHERE d.id IN (\
                 SELECT r.id FROM (SELECT p.id, p.lease_until, p.next_attempt_at, ROW_NUMBER() OVER \
                 (PARTITION BY p.endpoint_id ORDER BY p.next_attempt_at, p.id) AS n \
                 FROM webhook_deliveries p JOIN webhook_endpoints w ON w.id = p.endpoint_id \
                 WHERE p.state = 'pending' AND w.enabled) r \
                 WHERE r.n <= $4 AND r.next_attempt_at <= $1 AND (r.lease_until IS NULL OR r.lease_until <= $1)) \
                 AND d.state = 'pending' AND (d.lease_until IS NULL OR d.lease_until <= $1) \
                 ORDER BY d.next_attempt_at LIMIT $3",
                $skip,
                ") RETURNING id"
            ))
            .bind(to_ms(now))
            .bind(to_ms(lease_until))
            .bind(limit)
            .bind(webhook::PER_ENDPOINT_IN_FLIGHT)
            .fetch_all(self.w())
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.try_get::<String, _>("id").map_err(db_err))
            .collect::<Result<_>>()?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(r) = sqlx::query("SELECT * FROM webhook_deliveries WHERE id = $1")
                    .bind(&id)
                    .fetch_optional(self.w())
                    .await
                    .map_err(db_err)?
                else {
                    continue;
                };
                let d = Self::delivery_row(&r)?;
                if let Some(ep) = self.wh_get(&d.endpoint_id).await? {
                    out.push((d, ep));
                }
            }
            Ok(out)
        }

        async fn wh_record(&self, res: &DeliveryResult, disable: Option<&NewEvent>) -> Result<()> {
            let a = &res.attempt;
            let mut tx = self.w().begin().await.map_err(db_err)?;
            sqlx::query(
                "INSERT INTO webhook_attempts (delivery_id, endpoint_id, at, duration_ms, status, error) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&a.delivery_id)
            .bind(&a.endpoint_id)
            .bind(to_ms(a.at))
            .bind(a.duration_ms)
            .bind(a.status)
            .bind(&a.error)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            let (state, next) = match (res.delivered, res.next_attempt_at) {
                (true, _) => ("delivered", a.at),
                (false, Some(next)) => ("pending", next),
                (false, None) => ("failed", a.at),
            };
            sqlx::query(
                "UPDATE webhook_deliveries SET state = $2, next_attempt_at = $3, lease_until = NULL, \
                 last_status = $4, last_error = $5, delivered_at = $6 WHERE id = $1",
            )
            .bind(&a.delivery_id)
            .bind(state)
            .bind(to_ms(next))
            .bind(a.status)
            .bind(&a.error)
            .bind(res.delivered.then(|| to_ms(a.at)))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            if res.delivered {
                sqlx::query("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1")
                    .bind(&a.endpoint_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
            } else {
                sqlx::query(
                    "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $2) WHERE id = $1",
                )
                .bind(&a.endpoint_id)
                .bind(to_ms(a.at))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            if let Some(event) = disable {
                let n = sqlx::query(
                    "UPDATE webhook_endpoints SET enabled = $2, disabled_reason = $3, updated_at = $4 \
                     WHERE id = $1 AND enabled",
                )
                .bind(&a.endpoint_id)
                .bind(false)
                .bind("every delivery attempt failed for too long")
                .bind(to_ms(a.at))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
                if n > 0 {
                    sqlx::query(
                        "UPDATE webhook_deliveries SET state = 'failed', lease_until = NULL \
                         WHERE endpoint_id = $1 AND state = 'pending'",
                    )
                    .bind(&a.endpoint_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                }
            }
            tx.commit().await.map_err(db_err)
        }

        async fn wh_notice_candidates(
            &self,
            kind: NoticeKind,
            threshold: i64,
            now: OffsetDateTime,
            cutoff: OffsetDateTime,
            limit: i64,
        ) -> Result<Vec<NoticeCandidate>> {
            let sql = match kind {
                NoticeKind::KeyExpiring => {
                    "SELECT k.id AS cid, k.org_id, k.project_id, k.name, k.expires_at AS at, CAST(NULL AS TEXT) AS client_id, \
                     CAST(NULL AS BIGINT) AS rotation_days FROM api_keys k WHERE k.is_active AND k.expires_at IS NOT NULL \
                     AND k.expires_at > $1 AND k.expires_at <= $2 AND NOT EXISTS (SELECT 1 FROM credential_notices n \
                     WHERE n.kind = $3 AND n.credential_id = k.id AND n.threshold <= $4) ORDER BY k.expires_at LIMIT $5"
                }
                NoticeKind::KeyUnused => {
                    "SELECT k.id AS cid, k.org_id, k.project_id, k.name, COALESCE(k.last_used_at, k.created_at) AS at, \
                     CAST(NULL AS TEXT) AS client_id, CAST(NULL AS BIGINT) AS rotation_days FROM api_keys k WHERE k.is_active AND $1 >= 0 \
                     AND COALESCE(k.last_used_at, k.created_at) <= $2 AND NOT EXISTS (SELECT 1 FROM credential_notices n \
                     WHERE n.kind = $3 AND n.credential_id = k.id AND n.threshold = $4) ORDER BY k.seq LIMIT $5"
                }
                NoticeKind::SecretRotationDue => {
                    "SELECT s.id AS cid, c.org_id, c.project_id, c.name, s.created_at AS at, c.client_id AS client_id, \
                     c.secret_rotation_days AS rotation_days FROM oauth_client_secrets s \
                     JOIN oauth_clients c ON c.client_id = s.client_id WHERE c.disabled_at IS NULL \
                     AND ((c.secret_rotation_days IS NOT NULL AND s.created_at + c.secret_rotation_days * 86400000 <= $1) \
                     OR (c.secret_rotation_days IS NULL AND s.created_at <= $2)) \
                     AND NOT EXISTS (SELECT 1 FROM credential_notices n WHERE n.kind = $3 AND n.credential_id = s.id \
                     AND $4 = $4) ORDER BY s.created_at LIMIT $5"
                }
            };
            let rows = sqlx::query(sql)
                .bind(to_ms(now))
                .bind(to_ms(cutoff))
                .bind(kind.action())
                .bind(threshold)
                .bind(limit)
                .fetch_all(self.r())
                .await
                .map_err(db_err)?;
            rows.iter()
                .map(|r| {
                    Ok(NoticeCandidate {
                        credential_id: r.try_get("cid").map_err(db_err)?,
                        org_id: r.try_get("org_id").map_err(db_err)?,
                        project_id: r.try_get("project_id").map_err(db_err)?,
                        name: r.try_get("name").map_err(db_err)?,
                        at: from_ms(r.try_get("at").map_err(db_err)?),
                        client_id: r.try_get("client_id").map_err(db_err)?,
                        rotation_days: r.try_get("rotation_days").map_err(db_err)?,
                    })
                })
                .collect()
        }

        async fn wh_notice_record(
            &self,
            kind: NoticeKind,
            credential_id: &str,
            threshold: i64,
            event: &NewEvent,
        ) -> Result<bool> {
            let mut tx = self.w().begin().await.map_err(db_err)?;
            let n = sqlx::query(
                "INSERT INTO credential_notices (kind, credential_id, threshold, at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(kind.action())
            .bind(credential_id)
            .bind(threshold)
            .bind(to_ms(event.at))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
            if n == 0 {
                return Ok(false);
            }
            Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
            tx.commit().await.map_err(db_err)?;
            Ok(true)
        }
    };
}
