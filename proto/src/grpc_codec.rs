//! The gRPC codec of every Tandem service: protobuf through prost, except for what a body that
//! is not the protobuf message it should be becomes.
//!
//! `tonic_prost::ProstCodec` answers such a body with `INTERNAL` in both directions. A server
//! that cannot decode a *request* was sent a bad request: that is the caller's error,
//! `INVALID_ARGUMENT` (gRPC status codes: "the client specified an invalid argument"), and it
//! must not look like a server fault. A client that cannot decode a *response* still gets
//! `INTERNAL`: the gateway fails over on `INTERNAL` but passes `INVALID_ARGUMENT` on, so a node
//! answering garbage must not look like the device's mistake. The direction is known from the
//! message type ([`WireMessage`]), so one codec serves both the client and the server stubs.
//! Framing errors below the codec (a bad compressed flag, a truncated frame) are tonic's and
//! stay `INTERNAL`, as the gRPC compression spec requires for the flag.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::ProstEncoder;

/// A message carried by an RPC, and which side decodes it.
pub trait WireMessage {
    /// The code when the received bytes do not decode: `INVALID_ARGUMENT` for requests (the
    /// server decodes them), `INTERNAL` for responses (the client decodes them).
    const UNDECODABLE: Code;
    /// The message's protobuf name, for the status message.
    const NAME: &'static str;
}

macro_rules! wire {
    ($code:ident: $($t:ident),* $(,)?) => {
        $(impl WireMessage for crate::v1::$t {
            const UNDECODABLE: Code = Code::$code;
            const NAME: &'static str = concat!("tandem.v1.", stringify!($t));
        })*
    };
}

wire!(InvalidArgument:
    SubmitRequest, GetAttestationRequest, GetKeyConfigsRequest, DiscoverRequest,
    GetCheckpointRequest, GetInclusionProofRequest, GetConsistencyProofRequest,
    GetEntriesRequest, DeviceGenerateRequest, ChatRequest, ListModelsRequest,
    ListNodesRequest, HealthRequest,
);
wire!(Internal:
    SubmitReply, AttestationBundle, KeyConfigs, DiscoverResponse, Checkpoint, InclusionProof,
    ConsistencyProof, GetEntriesResponse, DeviceEvent, ListModelsResponse, ListNodesResponse,
    HealthResponse,
);

/// Prost encoding; decoding errors coded by [`WireMessage::UNDECODABLE`].
#[derive(Debug, Clone, Copy)]
pub struct TandemCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for TandemCodec<T, U> {
    fn default() -> Self {
        TandemCodec(PhantomData)
    }
}

impl<T, U> Codec for TandemCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + WireMessage + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = TandemDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        TandemDecoder(PhantomData)
    }
}

/// Decodes `U`, naming it and its bytes' fault in the status.
#[derive(Debug, Clone, Copy)]
pub struct TandemDecoder<U>(PhantomData<U>);

impl<U: Message + Default + WireMessage> Decoder for TandemDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            Status::new(
                U::UNDECODABLE,
                format!(
                    "the message is not a valid {} protobuf ({e}); check that the client speaks \
                     tandem.v1",
                    U::NAME
                ),
            )
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
