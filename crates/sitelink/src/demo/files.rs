//! The demo's files, written into its data directory when absent (so a
//! person's edits survive a restart): `central.toml`, each site's
//! `site.toml` and scripts. They are ordinary configuration: what a real
//! deployment would write, with the demo's ports.

/// One script of a demo site: name, file name, interval in ms at speed 1,
/// source.
pub type DemoScript = (&'static str, &'static str, u64, &'static str);

/// The two demo sites and their scripts.
pub const SITES: [(&str, &[DemoScript]); 2] = [
    (
        "plant-north",
        &[
            ("orders", "orders.rhai", 2000, NORTH_ORDERS),
            ("reports", "reports.rhai", 20000, REPORTS),
        ],
    ),
    (
        "plant-south",
        &[
            ("output", "output.rhai", 3000, SOUTH_OUTPUT),
            ("reports", "reports.rhai", 25000, REPORTS),
        ],
    ),
];

pub fn central_toml(link_port: u16, http: std::net::SocketAddr, smtp_port: u16) -> String {
    // Beyond loopback central wants a metrics token (README security model).
    let metrics = if http.ip().is_loopback() {
        String::new()
    } else {
        format!(
            "metrics_token = \"{:032x}\"   # /metrics wants Authorization: Bearer <this>\n",
            rand::random::<u128>()
        )
    };
    format!(
        r#"# The demo's central (written by `sitelink demo`; edit freely, it is not
# overwritten). Reference: the README's configuration section.
[central]
database_url = "sqlite://central.db"
link_bind = "127.0.0.1:{link_port}"     # where the sites connect
http_bind = "{http}"                    # the web UI and the REST API (`--http` overrides)
reconcile_interval_seconds = 60
command_timeout_ms = 5000
{metrics}
# Mail goes to the demo's SMTP sink, which keeps every message in mail/.
[notification_outbox]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
from = "sitelink-demo@plant.example"
retry = {{ interval_ms = 5000, backoff = 2.0, max_interval_ms = 60000, max_retries = 5 }}

[notification_lists]
shift-leads = ["shift-leads@plant.example"]
maintenance = ["maintenance@plant.example", "on-call@plant.example"]
"#
    )
}

pub fn site_toml(
    name: &str,
    link_port: u16,
    token: &str,
    admin_port: u16,
    erp_port: u16,
    scripts: &[DemoScript],
) -> String {
    let mut s = format!(
        r#"# The demo's site {name} (written by `sitelink demo`; edit freely, it is
# not overwritten). Scripts reload when their file changes.
[site]
name = "{name}"
data_dir = "data"                      # buffer.db: the store-and-forward buffer and tracking table

[admin]
bind = "127.0.0.1:{admin_port}"        # open it in a browser: an index of the admin API

[central]
addresses = ["http://127.0.0.1:{link_port}"]
token = "{token}"
reconnect_max_ms = 2000

# The simulated ERP of the demo: up, then 503s, then slow, then up again,
# on a two-minute cycle; article X-999 is refused (400) so some calls fail.
[external_systems.erp]
base_url = "http://127.0.0.1:{erp_port}/api"
timeout_ms = 2000
retry = {{ interval_ms = 4000, backoff = 1.5, max_interval_ms = 20000, max_retries = 3, jitter = 0.1 }}

[external_systems.erp.methods.postOrder]
http_method = "POST"
path = "/orders"

[external_systems.erp.methods.reportOutput]
http_method = "POST"
path = "/output"

[external_systems.erp.methods.health]
http_method = "GET"
path = "/health"

# The plant's own database (SQLite here; postgres:// and mysql:// work the same).
[databases.plantdb]
url = "sqlite://data/plant.db"
init = ["PRAGMA busy_timeout = 2000"]
retry = {{ interval_ms = 2000, max_retries = 5 }}
"#
    );
    for (script, file, interval, _) in scripts {
        s.push_str(&format!(
            "\n[[script]]\nname = \"{script}\"\nfile = \"scripts/{file}\"\ninstance = \"line1\"\ninterval_ms = {interval}\n"
        ));
    }
    s
}

const NORTH_ORDERS: &str = r#"// plant-north, line 1: every finished order goes to the ERP, and its
// batch into the plant database. Both calls are *cached*: each returns a
// TrackedOperationId at once; the site delivers it, retrying through ERP
// outages, and parks it when its retries run out (Retry it in the web UI).
// Edit this file while the demo runs: the next run uses the new version.

Database.Write("plantdb", "CREATE TABLE IF NOT EXISTS ticks(n INTEGER PRIMARY KEY AUTOINCREMENT)", []);
Database.Write("plantdb", "CREATE TABLE IF NOT EXISTS batches(order_no INTEGER, line TEXT, kg REAL CHECK (kg >= 0))", []);
Database.Write("plantdb", "INSERT INTO ticks DEFAULT VALUES", []);
let n = Database.Query("plantdb", "SELECT MAX(n) AS n FROM ticks", [])[0].n;

// Article X-999 is unknown to the ERP: it answers 400, the call is Failed.
let article = if n % 9 == 4 { "X-999" } else { "A-100" };
let order = ExternalSystem.CachedCall("erp", "postOrder", #{ order: n, line: "L1", article: article, qty: 10 + n % 5 });

// Now and then the scale glitches: the CHECK refuses a negative weight (Failed).
let kg = if n % 13 == 6 { -1.0 } else { 100.0 + (n % 7) * 2.5 };
let batch = Database.CachedWrite("plantdb", "INSERT INTO batches(order_no, line, kg) VALUES (?, ?, ?)", [n, "L1", kg]);

#{ order: order, batch: batch }
"#;

const SOUTH_OUTPUT: &str = r#"// plant-south, line 1: the output counter goes to the ERP and into the
// plant database, both cached (see plant-north's orders.rhai).

Database.Write("plantdb", "CREATE TABLE IF NOT EXISTS ticks(n INTEGER PRIMARY KEY AUTOINCREMENT)", []);
Database.Write("plantdb", "CREATE TABLE IF NOT EXISTS output(report INTEGER, units INTEGER CHECK (units >= 0))", []);
Database.Write("plantdb", "INSERT INTO ticks DEFAULT VALUES", []);
let n = Database.Query("plantdb", "SELECT MAX(n) AS n FROM ticks", [])[0].n;

let article = if n % 11 == 5 { "X-999" } else { "B-200" };
let report = ExternalSystem.CachedCall("erp", "reportOutput", #{ report: n, article: article, units: 120 + n % 9 });
let units = if n % 17 == 8 { -5 } else { 120 + n % 9 };
let row = Database.CachedWrite("plantdb", "INSERT INTO output(report, units) VALUES (?, ?)", [n, units]);

#{ report: report, row: row }
"#;

const REPORTS: &str = r#"// Notifications: a shift report to the shift leads, and a warning to
// maintenance while the ERP does not answer. Notify.Send returns an id at
// once; central's Notification Outbox mails it (here: to the demo's SMTP
// sink, which keeps every message in the data directory's mail/ folder).

let report = Notify.Send("shift-leads", "Shift report", "Line 1 is running; orders are reported to the ERP.");
let warning = ();
try {
    ExternalSystem.Call("erp", "health", #{});
} catch (err) {
    warning = Notify.Send("maintenance", "The ERP does not answer", `Orders are buffered at the site and retried.\n\n${err}`);
}
#{ report: report, warning: warning }
"#;
