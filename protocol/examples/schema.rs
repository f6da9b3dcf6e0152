//! Prints the edge.v1 JSON Schema generated from the event types:
//!
//!     cargo run -p edge-protocol --example schema > docs/schema/edge.v1.schema.json

fn main() {
    print!("{}", edge_protocol::schema::edge_v1_text());
}
