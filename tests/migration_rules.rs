//! Migrations follow expand and contract (docs/operations.md, "Upgrading"): a migration may not
//! rewrite a table that existed before it, build an index on one under the migration's lock,
//! validate a new constraint on one while holding it, or make one of its columns `NOT NULL`:
//! each blocks every write to the table (and so the serving replicas) for as long as the table
//! takes to read or write, which a large table makes minutes. The rule is checked by applying each
//! migration to the database the earlier ones built and comparing the catalog before and after,
//! so it needs no parsing of SQL and holds for empty tables as for large ones (a rewrite gives a
//! table new storage whatever its size).

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgPool;

/// The last migration written before the rule: those up to it ran on young installations and are
/// kept as they are.
const BEFORE_THE_RULE: i64 = 20_261_203_000_038;

/// What the catalog says of the tables of the `public` schema.
#[derive(Debug, Default)]
struct Catalog {
    /// Every table, partitioned or not.
    tables: BTreeSet<String>,
    /// Every column, as `table.column`.
    columns: BTreeSet<String>,
    /// Each table's (and partition's) storage.
    storage: BTreeMap<String, u32>,
    /// Each index, with its table.
    indexes: BTreeMap<String, String>,
    /// Each validated check or foreign-key constraint, as `table.name`.
    constraints: BTreeSet<String>,
    /// Each `NOT NULL` column, as `table.column`.
    not_null: BTreeSet<String>,
}

async fn catalog(pool: &PgPool) -> Catalog {
    let mut catalog = Catalog::default();
    let tables: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.relname::text, c.relfilenode::bigint FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (table, storage) in tables {
        catalog
            .storage
            .insert(table, u32::try_from(storage).unwrap());
    }
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT relname::text FROM pg_class
         WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    catalog
        .tables
        .extend(tables.into_iter().map(|(name,)| name));
    let columns: Vec<(String, bool)> = sqlx::query_as(
        "SELECT t.relname || '.' || a.attname, a.attnotnull FROM pg_attribute a
         JOIN pg_class t ON t.oid = a.attrelid
         WHERE t.relnamespace = 'public'::regnamespace AND t.relkind IN ('r', 'p')
           AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (column, not_null) in columns {
        if not_null {
            catalog.not_null.insert(column.clone());
        }
        catalog.columns.insert(column);
    }
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.relname::text, t.relname::text FROM pg_index x
         JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
         WHERE t.relnamespace = 'public'::regnamespace",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    catalog.indexes.extend(indexes);
    let constraints: Vec<(String,)> = sqlx::query_as(
        "SELECT t.relname || '.' || c.conname FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
         WHERE t.relnamespace = 'public'::regnamespace AND c.contype IN ('c', 'f') AND c.convalidated",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    catalog
        .constraints
        .extend(constraints.into_iter().map(|(name,)| name));
    catalog
}

/// What `after` did to the tables that `before` already had, against the rule.
fn violations(before: &Catalog, after: &Catalog, in_transaction: bool) -> Vec<String> {
    let existed = |table: &str| before.tables.contains(table);
    let mut found = Vec::new();
    for (table, storage) in &before.storage {
        if after.storage.get(table).is_some_and(|now| now != storage) {
            found.push(format!("rewrites table `{table}`"));
        }
    }
    for (index, table) in &after.indexes {
        if in_transaction && !before.indexes.contains_key(index) && existed(table) {
            found.push(format!(
                "builds index `{index}` on `{table}` under the migration's lock (use CREATE INDEX CONCURRENTLY in a `-- no-transaction` migration)"
            ));
        }
    }
    for constraint in after.constraints.difference(&before.constraints) {
        let table = constraint.split('.').next().unwrap_or_default();
        if existed(table) {
            found.push(format!(
                "validates constraint `{constraint}` while holding the table (add it NOT VALID, VALIDATE it in a later migration)"
            ));
        }
    }
    for column in after.not_null.difference(&before.not_null) {
        // A column added NOT NULL with a constant default is written without reading the table.
        if before.columns.contains(column) {
            found.push(format!(
                "makes `{column}` NOT NULL, reading the table under its lock"
            ));
        }
    }
    found
}

/// Applies `sql` and answers what it did against the rule.
async fn apply_and_judge(pool: &PgPool, sql: &str, in_transaction: bool) -> Vec<String> {
    let before = catalog(pool).await;
    sqlx::raw_sql(sql).execute(pool).await.unwrap();
    let after = catalog(pool).await;
    violations(&before, &after, in_transaction)
}

#[sqlx::test(migrations = false)]
async fn no_migration_after_the_rule_locks_a_table_that_existed_before_it(pool: PgPool) {
    let mut found = Vec::new();
    for migration in efms_commands::MIGRATOR.iter() {
        let sql: &str = &migration.sql;
        if migration.version <= BEFORE_THE_RULE {
            sqlx::raw_sql(sql).execute(&pool).await.unwrap();
            continue;
        }
        for violation in apply_and_judge(&pool, sql, !migration.no_tx).await {
            found.push(format!(
                "{} {}: {violation}",
                migration.version, migration.description
            ));
        }
    }
    assert!(found.is_empty(), "{found:#?}");

    // The rule's teeth, on the tables the migrations built: what blocks writes is caught…
    for (locking, what) in [
        (
            "ALTER TABLE vms ALTER COLUMN live_containers TYPE bigint",
            "rewrites table `vms`",
        ),
        (
            "ALTER TABLE containers ADD COLUMN seen uuid NOT NULL DEFAULT gen_random_uuid()",
            "rewrites table `containers`",
        ),
        (
            "CREATE INDEX containers_by_image ON containers (image)",
            "builds index `containers_by_image`",
        ),
        (
            "ALTER TABLE webhooks ADD CONSTRAINT short_url CHECK (length(url) < 4096)",
            "validates constraint `webhooks.short_url`",
        ),
        (
            "ALTER TABLE alerts ALTER COLUMN acked_by SET NOT NULL",
            "makes `alerts.acked_by` NOT NULL",
        ),
    ] {
        let found = apply_and_judge(&pool, locking, true).await;
        assert!(
            found.iter().any(|violation| violation.contains(what)),
            "{locking}: {found:?}"
        );
    }
    // …and what expands without blocking is not.
    for expanding in [
        "ALTER TABLE vms ADD COLUMN rack text",
        "ALTER TABLE vms ADD COLUMN weight integer NOT NULL DEFAULT 1",
        "ALTER TABLE webhooks ADD CONSTRAINT short_description CHECK (length(description) < 4096) NOT VALID",
        "CREATE TABLE racks (tenant_id uuid NOT NULL, name text NOT NULL CHECK (name <> ''));
         CREATE INDEX racks_by_name ON racks (name)",
    ] {
        let found = apply_and_judge(&pool, expanding, true).await;
        assert!(found.is_empty(), "{expanding}: {found:?}");
    }
}
