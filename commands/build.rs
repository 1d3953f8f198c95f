//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds the
//! migrations directory, and a file added to it would otherwise go unnoticed.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
