//! Decoding a row of any supported database into [`Value`]s, by the column's database type.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sqlx::mysql::MySqlRow;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Column, ColumnIndex, Database, Decode, Row, Type, TypeInfo, ValueRef};

use super::{SourceError, Value};

const TS: &str = "%Y-%m-%d %H:%M:%S";

fn unsupported(col: &impl Column, type_name: &str) -> SourceError {
    SourceError::UnsupportedType {
        column: col.name().to_owned(),
        type_name: type_name.to_owned(),
    }
}

fn decode_err(col: &impl Column, e: sqlx::Error) -> SourceError {
    SourceError::UnsupportedType {
        column: col.name().to_owned(),
        type_name: format!("(decode failed: {e})"),
    }
}

/// Every column of `row`: NULL as [`Value::Null`], any other value through `decode` (given the
/// column's index and the column).
fn decode_columns<R: Row>(
    row: &R,
    mut decode: impl FnMut(usize, &<R::Database as Database>::Column) -> Result<Value, SourceError>,
) -> Result<Vec<Value>, SourceError>
where
    usize: ColumnIndex<R>,
{
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i).map_err(|e| decode_err(col, e))?;
        out.push(if raw.is_null() {
            Value::Null
        } else {
            decode(i, col)?
        });
    }
    Ok(out)
}

/// A date or time type, shown as text the same way whichever database it comes from.
trait Shown {
    fn shown(&self) -> String;
}

impl Shown for NaiveDateTime {
    fn shown(&self) -> String {
        self.format(TS).to_string()
    }
}

impl Shown for DateTime<Utc> {
    fn shown(&self) -> String {
        self.format(TS).to_string()
    }
}

impl Shown for NaiveDate {
    fn shown(&self) -> String {
        self.format("%Y-%m-%d").to_string()
    }
}

/// Column `i` decoded as `T` and shown as text.
fn shown<'r, R: Row, T>(row: &'r R, i: usize) -> Result<Value, sqlx::Error>
where
    T: Shown + Decode<'r, R::Database> + Type<R::Database>,
    usize: ColumnIndex<R>,
{
    Ok(Value::Text(row.try_get::<T, _>(i)?.shown()))
}

pub(super) fn pg_row(row: &PgRow) -> Result<Vec<Value>, SourceError> {
    decode_columns(row, |i, col| {
        let get_err = |e| decode_err(col, e);
        Ok(match col.type_info().name() {
            "BOOL" => Value::Bool(row.try_get(i).map_err(get_err)?),
            "INT2" => Value::Int(row.try_get::<i16, _>(i).map_err(get_err)?.into()),
            "INT4" => Value::Int(row.try_get::<i32, _>(i).map_err(get_err)?.into()),
            "INT8" => Value::Int(row.try_get(i).map_err(get_err)?),
            "FLOAT4" => Value::Float(row.try_get::<f32, _>(i).map_err(get_err)?.into()),
            "FLOAT8" => Value::Float(row.try_get(i).map_err(get_err)?),
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CITEXT" | "CHAR" => {
                Value::Text(row.try_get(i).map_err(get_err)?)
            }
            "TIMESTAMP" => shown::<_, NaiveDateTime>(row, i).map_err(get_err)?,
            "TIMESTAMPTZ" => shown::<_, DateTime<Utc>>(row, i).map_err(get_err)?,
            "DATE" => shown::<_, NaiveDate>(row, i).map_err(get_err)?,
            other => return Err(unsupported(col, other)),
        })
    })
}

pub(super) fn mysql_row(row: &MySqlRow) -> Result<Vec<Value>, SourceError> {
    decode_columns(row, |i, col| {
        let get_err = |e| decode_err(col, e);
        Ok(match col.type_info().name() {
            "BOOLEAN" => Value::Bool(row.try_get(i).map_err(get_err)?),
            "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" => {
                Value::Int(row.try_get(i).map_err(get_err)?)
            }
            "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED" => {
                Value::Int(row.try_get::<u32, _>(i).map_err(get_err)?.into())
            }
            "BIGINT UNSIGNED" => {
                let v: u64 = row.try_get(i).map_err(get_err)?;
                Value::Int(
                    i64::try_from(v)
                        .map_err(|_| unsupported(col, "BIGINT UNSIGNED above i64::MAX"))?,
                )
            }
            "FLOAT" => Value::Float(row.try_get::<f32, _>(i).map_err(get_err)?.into()),
            "DOUBLE" => Value::Float(row.try_get(i).map_err(get_err)?),
            "VARCHAR" | "CHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM"
            | "SET" => Value::Text(row.try_get(i).map_err(get_err)?),
            "TIMESTAMP" => shown::<_, DateTime<Utc>>(row, i).map_err(get_err)?,
            "DATETIME" => shown::<_, NaiveDateTime>(row, i).map_err(get_err)?,
            "DATE" => shown::<_, NaiveDate>(row, i).map_err(get_err)?,
            other => return Err(unsupported(col, other)),
        })
    })
}

pub(super) fn sqlite_row(row: &SqliteRow) -> Result<Vec<Value>, SourceError> {
    decode_columns(row, |i, col| {
        let get_err = |e| decode_err(col, e);
        // SQLite values carry their own storage class; the declared type only tells booleans.
        let raw = row.try_get_raw(i).map_err(get_err)?;
        let storage_info = raw.type_info();
        let declared_bool = col.type_info().name().eq_ignore_ascii_case("BOOLEAN");
        Ok(match storage_info.name() {
            "INTEGER" | "BOOLEAN" | "INT8" | "INT" | "BIGINT" => {
                let v: i64 = row.try_get_unchecked(i).map_err(get_err)?;
                if declared_bool {
                    Value::Bool(v != 0)
                } else {
                    Value::Int(v)
                }
            }
            "REAL" | "FLOAT" | "DOUBLE" => Value::Float(row.try_get_unchecked(i).map_err(get_err)?),
            "TEXT" | "DATETIME" | "DATE" | "TIME" => {
                Value::Text(row.try_get_unchecked(i).map_err(get_err)?)
            }
            "BLOB" => match String::from_utf8(row.try_get::<Vec<u8>, _>(i).map_err(get_err)?) {
                Ok(s) => Value::Text(s),
                Err(_) => return Err(unsupported(col, "BLOB (not UTF-8 text)")),
            },
            other => return Err(unsupported(col, other)),
        })
    })
}
