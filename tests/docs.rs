//! The examples in docs/*.md are run: every ```sql block followed by a ```text block must
//! print exactly that text in psql. Blocks run in order, in one fresh database per file.
use event_store_testing::*;
use std::process::Command;

/// (sql, expected output) pairs, in document order.
fn examples(markdown: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = vec![];
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.starts_with("```"))
                .collect();
            blocks.push((lang.trim().to_string(), body.join("\n")));
        }
    }
    blocks
        .windows(2)
        .filter(|w| w[0].0 == "sql" && w[1].0 == "text")
        .map(|w| (w[0].1.clone(), w[1].1.clone()))
        .collect()
}

/// Splits a block into statements at lines ending in ';' outside `$$` bodies; a psql
/// meta-command (`\i file`, run from the repository's root) is a statement of its own line.
fn statements(sql: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut in_body = false;
    for line in sql.lines() {
        if line.starts_with('\\') {
            out.push(line.to_string());
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        in_body ^= line.matches("$$").count() % 2 == 1;
        if !in_body && line.trim_end().ends_with(';') {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

fn psql(db: &TestDb, sql: &str) -> String {
    let host = std::env::var("ES_TEST_HOST").unwrap();
    let port = std::env::var("ES_TEST_PORT").unwrap();
    // One stream for stdout and stderr keeps errors in place among results.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exec \"$0\" \"$@\" 2>&1", &pg_bin("psql")])
        .args([
            "-X", "-q", "-h", &host, "-p", &port, "-U", "postgres", "-d", &db.name,
        ])
        .args(["-v", "SHOW_CONTEXT=never"])
        .env(
            "PGOPTIONS",
            "-c client_min_messages=warning -c TimeZone=UTC",
        );
    for s in statements(sql) {
        cmd.arg("-c").arg(s);
    }
    normalize(&String::from_utf8_lossy(&cmd.output().unwrap().stdout))
}

fn normalize(text: &str) -> String {
    text.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        .trim_matches('\n')
        .to_string()
}

/// With ES_DOCS_BLESS=1 the file is rewritten with what psql printed: review the diff.
fn check_file(path: &str) {
    let mut markdown = std::fs::read_to_string(path).unwrap();
    let examples = examples(&markdown);
    assert!(!examples.is_empty(), "{path} has no tested examples");
    let db = TestDb::new("docs");
    let mut failures = vec![];
    for (sql, want) in &examples {
        let got = psql(&db, sql);
        if got != normalize(want) {
            failures.push(format!(
                "--- {path}\n{sql}\n--- expected\n{want}\n--- got\n{got}\n"
            ));
            let (block, blessed) = (
                format!("```sql\n{sql}\n```\n```text\n{want}"),
                format!("```sql\n{sql}\n```\n```text\n{got}"),
            );
            let block = block.trim_end_matches('\n');
            markdown = markdown.replacen(block, blessed.trim_end_matches('\n'), 1);
        }
    }
    if std::env::var("ES_DOCS_BLESS").as_deref() == Ok("1") {
        std::fs::write(path, markdown).unwrap();
        return;
    }
    assert!(
        failures.is_empty(),
        "{} of {} examples differ:\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n")
    );
}

#[test]
fn reference_examples_run_as_documented() {
    check_file("docs/reference.md");
}

#[test]
fn dcb_examples_run_as_documented() {
    check_file("docs/dcb.md");
}

#[test]
fn integrity_examples_run_as_documented() {
    check_file("docs/integrity.md");
}

#[test]
fn time_travel_examples_run_as_documented() {
    check_file("docs/time-travel.md");
}

#[test]
fn catalog_examples_run_as_documented() {
    check_file("docs/catalog.md");
}

#[test]
fn compliance_examples_run_as_documented() {
    check_file("docs/compliance.md");
}

#[test]
fn feed_examples_run_as_documented() {
    check_file("docs/feed-and-projections.md");
}
