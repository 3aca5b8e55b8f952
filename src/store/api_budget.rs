//! The `api_budget` table: how many requests a provider's API was sent per UTC day, shared by
//! every process on the state DB. A request takes one unit with a single atomic statement before
//! it is sent, so two processes cannot both take the last one.

use chrono::NaiveDate;

use super::{Param, Store, StoreError};

/// Takes one unit if fewer than `$3` are used: inserts the day's row at 1, or adds 1 to a row
/// still under the limit. Changes (and returns) one row, with the day's count after it, exactly
/// when the unit was taken.
const TAKE_SQL: &str = "INSERT INTO api_budget (provider, day, used) VALUES ($1, $2, 1)
     ON CONFLICT (provider, day) DO UPDATE SET used = api_budget.used + 1
     WHERE api_budget.used < $3
     RETURNING used";

fn day_text(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

impl Store {
    /// Takes one request from `provider`'s budget of `limit` for `day` (UTC). False when the
    /// day's budget is spent (nothing is taken then).
    pub async fn take_api_budget(
        &self,
        provider: &str,
        day: NaiveDate,
        limit: u32,
    ) -> Result<bool, StoreError> {
        Ok(self
            .take_api_budget_counted(provider, day, limit)
            .await?
            .is_some())
    }

    /// [`Store::take_api_budget`], answering the day's count including this request when it was
    /// taken (what quota alerts compare with the limit), `None` when the budget is spent.
    pub async fn take_api_budget_counted(
        &self,
        provider: &str,
        day: NaiveDate,
        limit: u32,
    ) -> Result<Option<u64>, StoreError> {
        const WHAT: &str = "count an API request";
        if limit == 0 {
            return Ok(None);
        }
        let params = [
            Param::from(provider),
            Param::Text(day_text(day)),
            Param::Int(i64::from(limit)),
        ];
        let used: Option<i64> = if let Some(writer) = self.writer() {
            writer
                .run(WHAT, move |conn| {
                    let err = super::writer::native_err(WHAT);
                    let mut stmt = conn.prepare_cached(TAKE_SQL).map_err(&err)?;
                    let values: Vec<&dyn rusqlite::ToSql> =
                        params.iter().map(|p| p as &dyn rusqlite::ToSql).collect();
                    super::writer::bind_numbered(&mut stmt, &values).map_err(&err)?;
                    // SQLite makes every change of an INSERT ... RETURNING at its first step.
                    let mut rows = stmt.raw_query();
                    match rows.next().map_err(&err)? {
                        Some(row) => row.get::<_, i64>(0).map(Some).map_err(&err),
                        None => Ok(None),
                    }
                })
                .await?
        } else {
            let row: Option<(i64,)> = sqlx::query_as(TAKE_SQL)
                .bind(provider)
                .bind(day_text(day))
                .bind(i64::from(limit))
                .fetch_optional(self.pool())
                .await
                .map_err(StoreError::query(WHAT))?;
            row.map(|(n,)| n)
        };
        Ok(used.map(|n| u64::try_from(n).unwrap_or(0)))
    }

    /// Requests counted for `provider` on `day` (UTC).
    pub async fn api_budget_used(&self, provider: &str, day: NaiveDate) -> Result<u64, StoreError> {
        let used: Option<(i64,)> =
            sqlx::query_as("SELECT used FROM api_budget WHERE provider = $1 AND day = $2")
                .bind(provider)
                .bind(day_text(day))
                .fetch_optional(self.pool())
                .await
                .map_err(StoreError::query("read the API budget"))?;
        Ok(used.map_or(0, |(n,)| u64::try_from(n).unwrap_or(0)))
    }
}
