//! Build script: the SQL migrations are embedded by `sqlx::migrate!`, so rebuild when they change.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
