//! Encoding an envelope to JSON or CBOR and decoding it gives the same envelope, for
//! envelopes built from arbitrary input; arbitrary bytes never panic either decoder.
#![no_main]

use edge_protocol::event::{
    Body, EquipmentState, EquipmentStateValue, Exception, ExceptionReason, Gs1Map, InventoryScan,
    ShipmentScan, ShipmentSort, ShipmentWeight, SortResult, WeightMode,
};
use edge_protocol::{Envelope, Role};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn pick<T: Copy>(u: &mut Unstructured<'_>, from: &[T]) -> Result<T> {
    Ok(*u.choose(from)?)
}

fn body(u: &mut Unstructured<'_>) -> Result<Body> {
    Ok(match u.int_in_range(0..=5)? {
        0 => Body::ShipmentScan(ShipmentScan {
            code: u.arbitrary()?,
            symbology: u.arbitrary()?,
            sscc: u.arbitrary()?,
            gs1: u.arbitrary::<Gs1Map>()?,
        }),
        1 => Body::InventoryScan(InventoryScan {
            code: u.arbitrary()?,
            symbology: u.arbitrary()?,
            gtin: u.arbitrary()?,
            batch: u.arbitrary()?,
            expiry: u.arbitrary()?,
            serial: u.arbitrary()?,
            quantity: u.arbitrary()?,
            net_kg: u.arbitrary()?,
            gs1: u.arbitrary::<Gs1Map>()?,
        }),
        2 => Body::ShipmentWeight(ShipmentWeight {
            weight_kg: u.arbitrary()?,
            mode: pick(u, &[WeightMode::Gross, WeightMode::Net])?,
            tare_kg: u.arbitrary()?,
            unit: u.arbitrary()?,
            sscc: u.arbitrary()?,
        }),
        3 => Body::ShipmentSort(ShipmentSort {
            code: u.arbitrary()?,
            sscc: u.arbitrary()?,
            destination: u.arbitrary()?,
            result: pick(
                u,
                &[
                    SortResult::Diverted,
                    SortResult::Recirculated,
                    SortResult::NoRead,
                    SortResult::Full,
                    SortResult::Fault,
                ],
            )?,
        }),
        4 => Body::EquipmentState(EquipmentState {
            state: pick(
                u,
                &[
                    EquipmentStateValue::Running,
                    EquipmentStateValue::Stopped,
                    EquipmentStateValue::Fault,
                ],
            )?,
            code: u.arbitrary()?,
            message: u.arbitrary()?,
        }),
        _ => Body::Exception(Exception {
            reason: pick(
                u,
                &[
                    ExceptionReason::NoRead,
                    ExceptionReason::InvalidBarcode,
                    ExceptionReason::UnstableWeight,
                    ExceptionReason::Overload,
                    ExceptionReason::Underload,
                    ExceptionReason::ScaleError,
                    ExceptionReason::Undecodable,
                    ExceptionReason::Dropped,
                ],
            )?,
            detail: u.arbitrary()?,
            count: u.arbitrary()?,
        }),
    })
}

fn envelope(u: &mut Unstructured<'_>) -> Result<Envelope> {
    let role = if u.arbitrary()? {
        Some(pick(u, &Role::ALL)?)
    } else {
        None
    };
    Ok(Envelope {
        id: u.arbitrary()?,
        site: u.arbitrary()?,
        seq: u.arbitrary()?,
        source: u.arbitrary()?,
        station: u.arbitrary()?,
        role,
        observed_at: u.arbitrary()?,
        body: body(u)?,
        raw: u.arbitrary()?,
        replayed: u.arbitrary()?,
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = Envelope::from_json(data);
    let _ = Envelope::from_cbor(data);
    let Ok(e) = envelope(&mut Unstructured::new(data)) else {
        return;
    };
    assert_eq!(
        Envelope::from_json(&e.to_json()).ok().as_ref(),
        Some(&e),
        "JSON"
    );
    assert_eq!(
        Envelope::from_cbor(&e.to_cbor()).ok().as_ref(),
        Some(&e),
        "CBOR"
    );
});
