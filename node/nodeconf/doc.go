// Package nodeconf is the configuration file of a daemon or host,
// DATA/config.toml: its format (File), its defaults (Defaults), reading it
// strictly (Load: an unknown key or a syntax error is one line naming the
// file), writing the commented template (Write, Create), and laying it
// under the flags (Merge: flags win, then the file, then the defaults).
//
// It is pure: no node, no network, no flags. Defaults repeats the flag
// defaults of cmd/gpunet rather than importing node, so that reading a
// file never drags in libp2p; a test in cmd/gpunet keeps the two equal.
// Only cmd/ imports nodeconf.
package nodeconf
