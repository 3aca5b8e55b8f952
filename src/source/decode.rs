//! Decoding a row of any supported database into [`Value`]s, by the column's database type.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sqlx::mysql::MySqlRow;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Column, Row, TypeInfo, ValueRef};

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

pub(super) fn pg_row(row: &PgRow) -> Result<Vec<Value>, SourceError> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i).map_err(|e| decode_err(col, e))?;
        if raw.is_null() {
            out.push(Value::Null);
            continue;
        }
        let ty = col.type_info().name();
        let get_err = |e| decode_err(col, e);
        out.push(match ty {
            "BOOL" => Value::Bool(row.try_get(i).map_err(get_err)?),
            "INT2" => Value::Int(row.try_get::<i16, _>(i).map_err(get_err)?.into()),
            "INT4" => Value::Int(row.try_get::<i32, _>(i).map_err(get_err)?.into()),
            "INT8" => Value::Int(row.try_get(i).map_err(get_err)?),
            "FLOAT4" => Value::Float(row.try_get::<f32, _>(i).map_err(get_err)?.into()),
            "FLOAT8" => Value::Float(row.try_get(i).map_err(get_err)?),
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CITEXT" | "CHAR" => {
                Value::Text(row.try_get(i).map_err(get_err)?)
            }
            "TIMESTAMP" => Value::Text(
                row.try_get::<NaiveDateTime, _>(i)
                    .map_err(get_err)?
                    .format(TS)
                    .to_string(),
            ),
            "TIMESTAMPTZ" => Value::Text(
                row.try_get::<DateTime<Utc>, _>(i)
                    .map_err(get_err)?
                    .format(TS)
                    .to_string(),
            ),
            "DATE" => Value::Text(
                row.try_get::<NaiveDate, _>(i)
                    .map_err(get_err)?
                    .format("%Y-%m-%d")
                    .to_string(),
            ),
            other => return Err(unsupported(col, other)),
        });
    }
    Ok(out)
}

pub(super) fn mysql_row(row: &MySqlRow) -> Result<Vec<Value>, SourceError> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i).map_err(|e| decode_err(col, e))?;
        if raw.is_null() {
            out.push(Value::Null);
            continue;
        }
        let ty = col.type_info().name();
        let get_err = |e| decode_err(col, e);
        out.push(match ty {
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
            "TIMESTAMP" => Value::Text(
                row.try_get::<DateTime<Utc>, _>(i)
                    .map_err(get_err)?
                    .format(TS)
                    .to_string(),
            ),
            "DATETIME" => Value::Text(
                row.try_get::<NaiveDateTime, _>(i)
                    .map_err(get_err)?
                    .format(TS)
                    .to_string(),
            ),
            "DATE" => Value::Text(
                row.try_get::<NaiveDate, _>(i)
                    .map_err(get_err)?
                    .format("%Y-%m-%d")
                    .to_string(),
            ),
            other => return Err(unsupported(col, other)),
        });
    }
    Ok(out)
}

pub(super) fn sqlite_row(row: &SqliteRow) -> Result<Vec<Value>, SourceError> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i).map_err(|e| decode_err(col, e))?;
        if raw.is_null() {
            out.push(Value::Null);
            continue;
        }
        // SQLite values carry their own storage class; the declared type only tells booleans.
        let storage_info = raw.type_info();
        let storage = storage_info.name();
        let declared_bool = col.type_info().name().eq_ignore_ascii_case("BOOLEAN");
        let get_err = |e| decode_err(col, e);
        out.push(match storage {
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
        });
    }
    Ok(out)
}
