// Package packaging holds what builds the Debian package (scripts/package
// and packaging/debian) and the test that installs it; it has no code.
package packaging
