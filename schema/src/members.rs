//! An observation's members inside the flat event object, read and written in one pass.
//!
//! An event is one flat JSON object: the envelope's members next to the observation's. serde's
//! `#[serde(flatten)]` would express that, but it buffers every member of the object before the
//! observation reads its own, which made decoding an event about twice as expensive. Instead
//! [`Event`](crate::Event)'s serde impls read the object once and hand each observation member
//! to [`ObservationMembers::read_member`]; the crate's `observation_members!` macro writes that
//! impl from the observation's struct definition, so the field list exists once per kind.
//!
//! The same macro writes [`ObservationMembers::read_encoded_members`], the observation's part of
//! the fast path for bytes laid out as [`Event::encode`](crate::Event::encode) writes them (see
//! [`crate::encoded_layout`]): each member type says through `MemberValue::read_encoded` how
//! it reads its value in that form.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::encoded_layout::LayoutCursor;
use crate::timestamp;

/// How an observation's members are written into, and picked out of, an event's JSON object.
///
/// Implemented by the crate's `observation_members!` macro for every observation type.
pub trait ObservationMembers: Sized {
    /// The members read so far while an event object is decoded; all absent at first.
    type Partial: Default;

    /// The JSON names of the members, in declaration (and wire) order.
    const MEMBER_NAMES: &'static [&'static str];

    /// Where `name` is in [`ObservationMembers::MEMBER_NAMES`], if it is a member.
    fn member_position(name: &str) -> Option<usize> {
        Self::MEMBER_NAMES.iter().position(|member| *member == name)
    }

    /// Writes every member, in declaration order, into an event's object.
    ///
    /// # Errors
    ///
    /// Whatever the serializer reports.
    fn serialize_members<S: SerializeStruct>(&self, object: &mut S) -> Result<(), S::Error>;

    /// Appends every member, in declaration order and each preceded by a comma, to an event's
    /// JSON text: the bytes `serialize_members` produces with serde_json.
    fn write_members_json(&self, json: &mut Vec<u8>);

    /// Reads the value of the member at `position` (from
    /// [`ObservationMembers::member_position`]) into `partial`.
    ///
    /// # Errors
    ///
    /// A value of the wrong type, or a member that appears twice (as serde's derive reports).
    fn read_member<'de, A: MapAccess<'de>>(
        partial: &mut Self::Partial,
        position: usize,
        map: &mut A,
    ) -> Result<(), A::Error>;

    /// The observation from the members read; an absent optional measurement is `None`.
    ///
    /// # Errors
    ///
    /// serde's "missing field" error for the first required member that was absent.
    fn finish<E: de::Error>(partial: Self::Partial) -> Result<Self, E>;

    /// Reads every member as [`ObservationMembers::write_members_json`] writes them (in
    /// declaration order, each preceded by a comma), or gives up with `None` at the first
    /// deviation; the caller then decodes the whole event with serde.
    fn read_encoded_members(cursor: &mut LayoutCursor<'_>) -> Option<Self>;
}

/// Defines an observation struct and implements [`ObservationMembers`] for it from the same
/// field list.
///
/// Every field must be `pub` and of a type implementing [`MemberValue`].
macro_rules! observation_members {
    (
        $(#[$struct_meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: $type:ty,
            )*
        }
    ) => {
        $(#[$struct_meta])*
        pub struct $name {
            $(
                $(#[$field_meta])*
                pub $field: $type,
            )*
        }

        const _: () = {
            use $crate::members::{read_member_once, MemberValue, ObservationMembers};

            /// The members of one observation read so far.
            #[derive(Default)]
            pub struct Partial {
                $($field: Option<$type>,)*
            }

            impl ObservationMembers for $name {
                type Partial = Partial;

                const MEMBER_NAMES: &'static [&'static str] = &[$(stringify!($field)),*];

                fn serialize_members<S: serde::ser::SerializeStruct>(
                    &self,
                    object: &mut S,
                ) -> Result<(), S::Error> {
                    $(MemberValue::write(&self.$field, stringify!($field), object)?;)*
                    Ok(())
                }

                fn write_members_json(&self, json: &mut Vec<u8>) {
                    $(
                        json.extend_from_slice(concat!(",\"", stringify!($field), "\":").as_bytes());
                        MemberValue::write_json(&self.$field, json);
                    )*
                }

                fn read_member<'de, A: serde::de::MapAccess<'de>>(
                    partial: &mut Partial,
                    position: usize,
                    map: &mut A,
                ) -> Result<(), A::Error> {
                    let mut candidate = 0_usize;
                    $(
                        if position == candidate {
                            return read_member_once(&mut partial.$field, stringify!($field), map);
                        }
                        candidate += 1;
                    )*
                    // Positions come from `MEMBER_NAMES`, so none is out of range; if one were,
                    // its value is skipped like an unknown member's.
                    let _ = candidate;
                    map.next_value::<$crate::members::SkipValue>().map(|_| ())
                }

                fn finish<E: serde::de::Error>(partial: Partial) -> Result<Self, E> {
                    // Fields are checked in declaration order, as serde's derive does.
                    Ok($name {
                        $(
                            $field: match partial.$field {
                                Some(value) => value,
                                None => MemberValue::absent(stringify!($field))?,
                            },
                        )*
                    })
                }

                fn read_encoded_members(
                    cursor: &mut $crate::encoded_layout::LayoutCursor<'_>,
                ) -> Option<Self> {
                    // A struct expression evaluates its fields in the order written: the
                    // declaration order, which is the wire order.
                    Some($name {
                        $(
                            $field: {
                                cursor.literal(concat!(",\"", stringify!($field), "\":").as_bytes())?;
                                MemberValue::read_encoded(cursor)?
                            },
                        )*
                    })
                }
            }
        };
    };
}

pub(crate) use observation_members;

/// A type an observation member can have, with serde's derive behaviour for it: how it is
/// written, read, and what an absent member means.
pub(crate) trait MemberValue: Sized {
    /// Writes the member `name` with this value.
    ///
    /// # Errors
    ///
    /// Whatever the serializer reports.
    fn write<S: SerializeStruct>(&self, name: &'static str, object: &mut S)
        -> Result<(), S::Error>;

    /// Appends the value as JSON: the bytes serde_json writes for it.
    fn write_json(&self, json: &mut Vec<u8>);

    /// Reads the member's value.
    ///
    /// # Errors
    ///
    /// A value of the wrong type.
    fn read<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Self, A::Error>;

    /// The value of an absent member `name`: `None` when optional.
    ///
    /// # Errors
    ///
    /// serde's "missing field" error when the member is required.
    fn absent<E: de::Error>(name: &'static str) -> Result<Self, E>;

    /// Reads the value in the form [`MemberValue::write_json`] writes it, as `read` would read
    /// that text; `None` (give up) for any other text, which `read` then decides on.
    fn read_encoded(cursor: &mut LayoutCursor<'_>) -> Option<Self>;
}

/// Reads a member's value into `slot`, refusing a second occurrence as serde's derive does.
///
/// # Errors
///
/// A value of the wrong type, or a member seen before.
pub(crate) fn read_member_once<'de, T: MemberValue, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    name: &'static str,
    map: &mut A,
) -> Result<(), A::Error> {
    read_once(slot, name, map, T::read)
}

/// Reads a member's value with `read` into `slot`, refusing a second occurrence.
///
/// # Errors
///
/// What `read` reports, or a member seen before.
pub(crate) fn read_once<'de, T, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    name: &'static str,
    map: &mut A,
    read: impl FnOnce(&mut A) -> Result<T, A::Error>,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(read(map)?);
    Ok(())
}

/// `MemberValue` for plain serde types: written and read by serde; `$absent` is what an absent
/// member named `$name` becomes, and the [`LayoutCursor`] method `$read_encoded` reads a value
/// in the encoded layout.
macro_rules! serde_member_value {
    ($name:ident => $absent:expr; $($type:ty => $read_encoded:path),*) => {$(
        impl MemberValue for $type {
            fn write<S: SerializeStruct>(
                &self,
                name: &'static str,
                object: &mut S,
            ) -> Result<(), S::Error> {
                object.serialize_field(name, self)
            }

            fn write_json(&self, json: &mut Vec<u8>) {
                write_json_value(json, self);
            }

            fn read<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Self, A::Error> {
                map.next_value()
            }

            fn absent<E: de::Error>($name: &'static str) -> Result<Self, E> {
                $absent
            }

            fn read_encoded(cursor: &mut LayoutCursor<'_>) -> Option<Self> {
                $read_encoded(cursor)
            }
        }
    )*};
}

serde_member_value!(name => Err(E::missing_field(name));
    String => LayoutCursor::owned_string,
    f64 => LayoutCursor::number);
serde_member_value!(_name => Ok(None);
    Option<f64> => LayoutCursor::optional_number,
    Option<bool> => LayoutCursor::optional_flag);

impl MemberValue for DateTime<Utc> {
    fn write<S: SerializeStruct>(
        &self,
        name: &'static str,
        object: &mut S,
    ) -> Result<(), S::Error> {
        object.serialize_field(name, &Timestamp(self))
    }

    fn write_json(&self, json: &mut Vec<u8>) {
        let mut buffer = [0_u8; timestamp::MAX_ZULU_LEN];
        match timestamp::write_zulu(self, &mut buffer) {
            // Digits and `-:.TZ` need no escaping.
            Some(text) => {
                json.push(b'"');
                json.extend_from_slice(text.as_bytes());
                json.push(b'"');
            }
            None => write_json_value(json, &Timestamp(self)),
        }
    }

    fn read<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Self, A::Error> {
        map.next_value_seed(TimestampSeed)
    }

    fn absent<E: de::Error>(name: &'static str) -> Result<Self, E> {
        Err(E::missing_field(name))
    }

    fn read_encoded(cursor: &mut LayoutCursor<'_>) -> Option<Self> {
        cursor.timestamp()
    }
}

/// Appends `value` as serde_json writes it.
pub(crate) fn write_json_value<T: Serialize + ?Sized>(json: &mut Vec<u8>, value: &T) {
    // Strings, numbers, booleans and timestamps always serialize, and a Vec never fails to grow.
    serde_json::to_writer(json, value).expect("event values always serialize to JSON");
}

/// A UTC time written as chrono writes it, without going through `core::fmt`.
pub(crate) struct Timestamp<'a>(pub(crate) &'a DateTime<Utc>);

impl Serialize for Timestamp<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        timestamp::serialize_utc(self.0, serializer)
    }
}

/// Reads a UTC time as chrono's `Deserialize` does, with the fast path for the common form.
pub(crate) struct TimestampSeed;

impl<'de> DeserializeSeed<'de> for TimestampSeed {
    type Value = DateTime<Utc>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        timestamp::deserialize_utc(deserializer)
    }
}

/// Any JSON value, read in full and dropped: what an unknown member's value goes through.
///
/// It accepts exactly what serde's buffering of unknown members under `#[serde(flatten)]`
/// accepted (every value `deserialize_any` can produce, numbers range-checked, strings checked,
/// nesting limited), without keeping anything. `serde::de::IgnoredAny` would not do: with
/// serde_json it skips values without checking number ranges or nesting depth, so inputs that
/// used to be refused would be accepted.
pub(crate) struct SkipValue;

impl<'de> Deserialize<'de> for SkipValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SkipValue, D::Error> {
        deserializer.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> de::Visitor<'de> for SkipVisitor {
    type Value = SkipValue;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, _value: bool) -> Result<SkipValue, E> {
        Ok(SkipValue)
    }

    fn visit_i64<E: de::Error>(self, _value: i64) -> Result<SkipValue, E> {
        Ok(SkipValue)
    }

    fn visit_u64<E: de::Error>(self, _value: u64) -> Result<SkipValue, E> {
        Ok(SkipValue)
    }

    fn visit_f64<E: de::Error>(self, _value: f64) -> Result<SkipValue, E> {
        Ok(SkipValue)
    }

    fn visit_str<E: de::Error>(self, _value: &str) -> Result<SkipValue, E> {
        Ok(SkipValue)
    }

    fn visit_bytes<E: de::Error>(self, _value: &[u8]) -> Result<SkipValue, E> {
        Ok(SkipValue)
    }

    fn visit_unit<E: de::Error>(self) -> Result<SkipValue, E> {
        Ok(SkipValue)
    }

    fn visit_none<E: de::Error>(self) -> Result<SkipValue, E> {
        Ok(SkipValue)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<SkipValue, D::Error> {
        SkipValue::deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<SkipValue, D::Error> {
        SkipValue::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SkipValue, A::Error> {
        while seq.next_element::<SkipValue>()?.is_some() {}
        Ok(SkipValue)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SkipValue, A::Error> {
        while map.next_entry::<SkipValue, SkipValue>()?.is_some() {}
        Ok(SkipValue)
    }
}
