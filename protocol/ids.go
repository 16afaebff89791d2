package protocol

import "time"

// Protocol IDs. A breaking change to a message bumps the major version; peers
// negotiate with multistream-select, so old and new can coexist on one host.
const (
	// TaskProtocol carries one task request and its progress events and result.
	TaskProtocol = "/gpunet/task/1.0.0"
	// FetchProtocol returns manifests and blocks by CID.
	FetchProtocol = "/gpunet/fetch/1.0.0"
	// DHTPrefix keeps gpunet's Kademlia DHT apart from the public IPFS one:
	// its protocol is DHTPrefix + "/kad/1.0.0".
	DHTPrefix = "/gpunet"
	// BeaconTopic is the GossipSub topic of load and temperature beacons.
	BeaconTopic = "/gpunet/beacon/1.0.0"
	// CapacityNamespace is the DHT record namespace of capacity records:
	// the key of a host's record is "/" + CapacityNamespace + "/" + string(peerID).
	CapacityNamespace = "gpunet-cap"
)

// Size caps. Every length prefix is checked against one of these before any
// buffer is allocated.
const (
	// MaxPromptBytes bounds prompt and negative prompt after normalisation.
	MaxPromptBytes = 2000
	// MaxTaskBytes bounds a canonical task encoding.
	MaxTaskBytes = 8 << 10
	// MaxRequestBytes bounds one request frame on the task and fetch protocols.
	MaxRequestBytes = 16 << 10
	// MaxBlockBytes bounds one output block (one output file).
	MaxBlockBytes = 16 << 20
	// MaxEventBytes bounds one event frame: a block plus its small envelope.
	MaxEventBytes = MaxBlockBytes + 4<<10
	// MaxManifestBytes bounds an encoded manifest.
	MaxManifestBytes = 64 << 10
	// MaxCapacityBytes bounds an encoded capacity record.
	MaxCapacityBytes = 4 << 10
	// MaxOutputs bounds the number of outputs of one task.
	MaxOutputs = 16
	// MaxEventsPerTask bounds how many events a client reads for one task, so a
	// host cannot keep a client reading forever.
	MaxEventsPerTask = 10000
	// MaxSubmitterBytes bounds a request's submitter name: an opaque key,
	// not a person's name.
	MaxSubmitterBytes = 64
	// MaxPreviews bounds how many partial images a request may ask for:
	// previews are for a person watching, and a few are enough to show that
	// the picture is coming along.
	MaxPreviews = 3
	// MaxPreviewBytes bounds one preview image. A preview is a glance, not
	// an output: a host downscales it to fit rather than delay the result.
	MaxPreviewBytes = 256 << 10
)

// Timing defaults shared by both ends of a stream.
const (
	// RequestTimeout bounds writing or reading a request frame.
	RequestTimeout = 10 * time.Second
	// CapacityMaxAge is how old a capacity record may be before validators
	// reject it; hosts republish well within it.
	CapacityMaxAge = 2 * time.Hour
	// MaxClockSkew is how far in the future a signed timestamp may be.
	MaxClockSkew = 5 * time.Minute
	// KeepaliveInterval is how often a host repeats its latest event to a
	// waiting client when nothing changed, so the client can tell a slow
	// host from a frozen one.
	KeepaliveInterval = 2 * time.Second
	// SuspectAfter is how long a client hears nothing from a host before it
	// suspects it and offers the task elsewhere too (without cancelling it
	// there): three missed keepalives.
	SuspectAfter = 3 * KeepaliveInterval
)
