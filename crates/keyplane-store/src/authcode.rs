//! The SQL of apps and the authorization-code grant (migration 0012), stamped into each
//! backend by `impl_store!`: [`authcode_store!`] as inherent methods (`db_*`, which the `Store`
//! implementation calls: `async_trait` cannot see into a macro invocation), [`authcode_rows!`].

/// The `Store` methods of apps, grants, codes and refresh tokens, for a backend whose rows are
/// `$row` and connections `$conn`.
macro_rules! authcode_store {
    ($row:ty, $conn:ty) => {
        async fn db_app_put(&self, app: &AppClient, event: Option<&NewEvent>) -> Result<()> {
            let mut tx = self.w().begin().await.map_err(db_err)?;
            sqlx::query(
                "INSERT INTO oauth_apps (client_id, kind, name, logo_uri, client_uri, redirect_uris, auth_method, \
                 secret_digest, document, created_at, fetched_at, blocked_at, blocked_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (client_id) DO UPDATE SET name = excluded.name, logo_uri = excluded.logo_uri, \
                 client_uri = excluded.client_uri, redirect_uris = excluded.redirect_uris, \
                 auth_method = excluded.auth_method, document = excluded.document, fetched_at = excluded.fetched_at",
            )
            .bind(&app.client_id)
            .bind(app.kind.as_str())
            .bind(&app.name)
            .bind(&app.logo_uri)
            .bind(&app.client_uri)
            .bind(to_json(&app.redirect_uris))
            .bind(app.auth_method.as_str())
            .bind(app.secret_digest.map(|d| d.0.to_vec()))
            .bind(app.document.to_string())
            .bind(to_ms(app.created_at))
            .bind(app.fetched_at.map(to_ms))
            .bind(app.blocked_at.map(to_ms))
            .bind(&app.blocked_by)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            if let Some(event) = event {
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
            }
            tx.commit().await.map_err(db_err)
        }

        async fn db_app_get(&self, client_id: &str) -> Result<Option<AppClient>> {
            let row = sqlx::query("SELECT * FROM oauth_apps WHERE client_id = $1")
                .bind(client_id)
                .fetch_optional(self.r())
                .await
                .map_err(db_err)?;
            row.map(|r| Self::app_row(&r)).transpose()
        }

        async fn db_app_list(&self, after: Option<&str>, limit: i64) -> Result<Vec<AppClient>> {
            let rows = sqlx::query(
                "SELECT * FROM oauth_apps WHERE client_id > $1 ORDER BY client_id LIMIT $2",
            )
            .bind(after.unwrap_or(""))
            .bind(limit)
            .fetch_all(self.r())
            .await
            .map_err(db_err)?;
            rows.iter().map(Self::app_row).collect()
        }

        async fn db_app_block(
            &self,
            client_id: &str,
            blocked: Option<(OffsetDateTime, String)>,
            event: &NewEvent,
        ) -> Result<bool> {
            let mut tx = self.w().begin().await.map_err(db_err)?;
            let (at, by) = match &blocked {
                Some((at, by)) => (Some(to_ms(*at)), Some(by.clone())),
                None => (None, None),
            };
            let n = sqlx::query("UPDATE oauth_apps SET blocked_at = $2, blocked_by = $3 WHERE client_id = $1")
                .bind(client_id)
                .bind(at)
                .bind(&by)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
            if n == 0 {
                return Ok(false);
            }
            if let Some(at) = at {
                Self::revoke_grants_in(&mut tx, "client_id", client_id, at, "app_blocked").await?;
            }
            Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
            tx.commit().await.map_err(db_err)?;
            Ok(true)
        }

        async fn db_grant_live_for(
            &self,
            member_id: &str,
            client_id: &str,
            resource: &str,
        ) -> Result<Option<Grant>> {
            let row = sqlx::query(
                "SELECT * FROM oauth_grants WHERE member_id = $1 AND client_id = $2 AND resource = $3 \
                 AND revoked_at IS NULL",
            )
            .bind(member_id)
            .bind(client_id)
            .bind(resource)
            .fetch_optional(self.r())
            .await
            .map_err(db_err)?;
            row.map(|r| Self::grant_row(&r)).transpose()
        }

        async fn db_grant_get(&self, id: &str) -> Result<Option<Grant>> {
            let row = sqlx::query("SELECT * FROM oauth_grants WHERE id = $1")
                .bind(id)
                .fetch_optional(self.r())
                .await
                .map_err(db_err)?;
            row.map(|r| Self::grant_row(&r)).transpose()
        }

        async fn db_grant_list(&self, org_id: &str, member_id: Option<&str>) -> Result<Vec<Grant>> {
            let rows = sqlx::query(
                "SELECT * FROM oauth_grants WHERE org_id = $1 AND ($2 IS NULL OR member_id = $2) \
                 ORDER BY (revoked_at IS NULL) DESC, created_at DESC, id LIMIT 1000",
            )
            .bind(org_id)
            .bind(member_id)
            .fetch_all(self.r())
            .await
            .map_err(db_err)?;
            rows.iter().map(Self::grant_row).collect()
        }

        async fn db_grant_save(&self, g: &Grant, code: &AuthCode, event: &NewEvent) -> Result<()> {
            let mut tx = self.w().begin().await.map_err(db_err)?;
            sqlx::query(
                "INSERT INTO oauth_grants (id, org_id, project_id, member_id, client_id, resource, scopes, \
                 created_at, updated_at, last_used_at, revoked_at, revoked_reason) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL, NULL) \
                 ON CONFLICT (id) DO UPDATE SET scopes = excluded.scopes, updated_at = excluded.updated_at",
            )
            .bind(&g.id)
            .bind(&g.org_id)
            .bind(&g.project_id)
            .bind(&g.member_id)
            .bind(&g.client_id)
            .bind(&g.resource)
            .bind(g.scopes.join(" "))
            .bind(to_ms(g.created_at))
            .bind(to_ms(g.updated_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_or(e, || "a consent for this app and resource was given at the same moment; try again".into()))?;
            sqlx::query(
                "INSERT INTO oauth_codes (digest, grant_id, client_id, redirect_uri, code_challenge, scopes, \
                 created_at, expires_at, used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)",
            )
            .bind(code.digest.0.to_vec())
            .bind(&code.grant_id)
            .bind(&code.client_id)
            .bind(&code.redirect_uri)
            .bind(&code.code_challenge)
            .bind(code.scopes.join(" "))
            .bind(to_ms(code.created_at))
            .bind(to_ms(code.expires_at))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
            tx.commit().await.map_err(db_err)
        }

        async fn db_grant_revoke(
            &self,
            id: &str,
            now: OffsetDateTime,
            reason: &str,
            event: &NewEvent,
        ) -> Result<bool> {
            let mut tx = self.w().begin().await.map_err(db_err)?;
            let n = Self::revoke_grants_in(&mut tx, "id", id, to_ms(now), reason).await?;
            if n > 0 {
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
            }
            tx.commit().await.map_err(db_err)?;
            Ok(n > 0)
        }

        async fn db_grant_touch(&self, id: &str, at: OffsetDateTime) -> Result<()> {
            sqlx::query(
                "UPDATE oauth_grants SET last_used_at = $2 WHERE id = $1 \
                 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(id)
            .bind(to_ms(at))
            .execute(self.w())
            .await
            .map_err(db_err)?;
            Ok(())
        }

        async fn db_code_redeem(&self, digest: &Digest, now: OffsetDateTime) -> Result<CodeUse> {
            let mut tx = self.w().begin().await.map_err(db_err)?;
            let won = sqlx::query(
                "UPDATE oauth_codes SET used_at = $2 WHERE digest = $1 AND used_at IS NULL",
            )
            .bind(digest.0.to_vec())
            .bind(to_ms(now))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected()
                == 1;
            let row = sqlx::query("SELECT * FROM oauth_codes WHERE digest = $1")
                .bind(digest.0.to_vec())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            Ok(match row {
                None => CodeUse::Unknown,
                Some(r) => {
                    let scopes: String = r.try_get("scopes").map_err(db_err)?;
                    let code = AuthCode {
                        digest: *digest,
                        grant_id: r.try_get("grant_id").map_err(db_err)?,
                        client_id: r.try_get("client_id").map_err(db_err)?,
                        redirect_uri: r.try_get("redirect_uri").map_err(db_err)?,
                        code_challenge: r.try_get("code_challenge").map_err(db_err)?,
                        scopes: split_scopes(&scopes),
                        created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                        expires_at: from_ms(r.try_get("expires_at").map_err(db_err)?),
                    };
                    if won {
                        CodeUse::Fresh(code)
                    } else {
                        CodeUse::Reused(code)
                    }
                }
            })
        }

        async fn db_refresh_put(&self, t: &RefreshToken) -> Result<()> {
            sqlx::query(
                "INSERT INTO oauth_refresh_tokens (digest, grant_id, client_id, scopes, jkt, created_at, expires_at, used_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
            )
            .bind(t.digest.0.to_vec())
            .bind(&t.grant_id)
            .bind(&t.client_id)
            .bind(t.scopes.join(" "))
            .bind(&t.jkt)
            .bind(to_ms(t.created_at))
            .bind(to_ms(t.expires_at))
            .execute(self.w())
            .await
            .map_err(db_err)?;
            Ok(())
        }

        async fn db_refresh_redeem(
            &self,
            digest: &Digest,
            now: OffsetDateTime,
            client_id: &str,
            jkt: Option<&str>,
        ) -> Result<RefreshUse> {
            let mut tx = self.w().begin().await.map_err(db_err)?;
            let won = sqlx::query(
                "UPDATE oauth_refresh_tokens SET used_at = $2 WHERE digest = $1 AND used_at IS NULL \
                 AND client_id = $3 AND (jkt IS NULL OR jkt = $4)",
            )
            .bind(digest.0.to_vec())
            .bind(to_ms(now))
            .bind(client_id)
            .bind(jkt)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected()
                == 1;
            let row = sqlx::query("SELECT * FROM oauth_refresh_tokens WHERE digest = $1")
                .bind(digest.0.to_vec())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            Ok(match row {
                None => RefreshUse::Unknown,
                Some(r) => {
                    let scopes: String = r.try_get("scopes").map_err(db_err)?;
                    let t = RefreshToken {
                        digest: *digest,
                        grant_id: r.try_get("grant_id").map_err(db_err)?,
                        client_id: r.try_get("client_id").map_err(db_err)?,
                        scopes: split_scopes(&scopes),
                        jkt: r.try_get("jkt").map_err(db_err)?,
                        created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                        expires_at: from_ms(r.try_get("expires_at").map_err(db_err)?),
                        used_at: opt_time(r.try_get("used_at").map_err(db_err)?),
                    };
                    if won {
                        RefreshUse::Fresh(t)
                    } else if t.used_at.is_some() {
                        RefreshUse::Reused(t)
                    } else {
                        RefreshUse::Refused(t)
                    }
                }
            })
        }

        async fn db_authcode_purge(&self, now: OffsetDateTime) -> Result<u64> {
            // Used codes are kept until they expire, so that a replay is recognised as one.
            let codes = sqlx::query("DELETE FROM oauth_codes WHERE expires_at <= $1")
                .bind(to_ms(now))
                .execute(self.w())
                .await
                .map_err(db_err)?;
            let refresh = sqlx::query("DELETE FROM oauth_refresh_tokens WHERE expires_at <= $1")
                .bind(to_ms(now))
                .execute(self.w())
                .await
                .map_err(db_err)?;
            Ok(codes.rows_affected() + refresh.rows_affected())
        }
    };
}

/// Row readers and the shared revocation for [`authcode_store!`], in the backend's own `impl`.
macro_rules! authcode_rows {
    ($row:ty, $conn:ty) => {
        fn app_row(r: &$row) -> Result<AppClient> {
            let kind: String = r.try_get("kind").map_err(db_err)?;
            let auth: String = r.try_get("auth_method").map_err(db_err)?;
            let secret: Option<Vec<u8>> = r.try_get("secret_digest").map_err(db_err)?;
            let document: String = r.try_get("document").map_err(db_err)?;
            Ok(AppClient {
                client_id: r.try_get("client_id").map_err(db_err)?,
                kind: AppKind::parse(&kind).ok_or_else(|| corrupt("app kind"))?,
                name: r.try_get("name").map_err(db_err)?,
                logo_uri: r.try_get("logo_uri").map_err(db_err)?,
                client_uri: r.try_get("client_uri").map_err(db_err)?,
                redirect_uris: from_json(&r.try_get::<String, _>("redirect_uris").map_err(db_err)?)?,
                auth_method: AppAuth::parse(&auth).ok_or_else(|| corrupt("app auth method"))?,
                secret_digest: secret
                    .map(|d| Digest::from_slice(&d).ok_or_else(|| corrupt("digest")))
                    .transpose()?,
                document: serde_json::from_str(&document).map_err(|_| corrupt("app document"))?,
                created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                fetched_at: opt_time(r.try_get("fetched_at").map_err(db_err)?),
                blocked_at: opt_time(r.try_get("blocked_at").map_err(db_err)?),
                blocked_by: r.try_get("blocked_by").map_err(db_err)?,
            })
        }

        fn grant_row(r: &$row) -> Result<Grant> {
            let scopes: String = r.try_get("scopes").map_err(db_err)?;
            Ok(Grant {
                id: r.try_get("id").map_err(db_err)?,
                org_id: r.try_get("org_id").map_err(db_err)?,
                project_id: r.try_get("project_id").map_err(db_err)?,
                member_id: r.try_get("member_id").map_err(db_err)?,
                client_id: r.try_get("client_id").map_err(db_err)?,
                resource: r.try_get("resource").map_err(db_err)?,
                scopes: split_scopes(&scopes),
                created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                updated_at: from_ms(r.try_get("updated_at").map_err(db_err)?),
                last_used_at: opt_time(r.try_get("last_used_at").map_err(db_err)?),
                revoked_at: opt_time(r.try_get("revoked_at").map_err(db_err)?),
                revoked_reason: r.try_get("revoked_reason").map_err(db_err)?,
            })
        }

        /// Revokes the live grants whose `column` (`id` or `client_id`) is `value`, and forgets
        /// their codes and refresh tokens; how many were revoked.
        async fn revoke_grants_in(
            conn: &mut $conn,
            column: &'static str,
            value: &str,
            at_ms: i64,
            reason: &str,
        ) -> Result<u64> {
            let which = format!("SELECT id FROM oauth_grants WHERE {column} = $1 AND revoked_at IS NULL");
            for table in ["oauth_codes", "oauth_refresh_tokens"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE grant_id IN ({which})"))
                    .bind(value)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err)?;
            }
            let n = sqlx::query(&format!(
                "UPDATE oauth_grants SET revoked_at = $2, revoked_reason = $3 WHERE {column} = $1 AND revoked_at IS NULL"
            ))
            .bind(value)
            .bind(at_ms)
            .bind(reason)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?
            .rows_affected();
            Ok(n)
        }
    };
}

/// Scopes stored space-delimited.
pub(crate) fn split_scopes(text: &str) -> Vec<String> {
    text.split(' ')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}
