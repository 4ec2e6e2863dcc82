package cliflags

import (
	"regexp"
	"runtime/debug"
	"strings"

	"github.com/prometheus/common/version"
)

// The daemons print github.com/prometheus/common/version's variables
// (--version, the "starting" log line, workersd_build_info), which only a
// build with -ldflags -X sets: scripts/package and packaging/ do. Every
// other build (go build, go install, go run) would print an empty version.
// So every program that imports this package (sdwriter, workersd-agent,
// the examples) fills the variables that -ldflags left empty from the
// build information the Go toolchain puts in every binary, before its main
// runs: the ldflags values win when given, else the module's version and
// the VCS revision (with "-modified" when the checkout had changes).
//
// What a build gets:
//   - go build or go run in a git checkout (Go's default -buildvcs=auto):
//     the version Go derives from the checkout, a pseudo-version such as
//     0.0.0-20260101120000-0123456789ab (with "+dirty" when modified) or
//     the tag, and the full commit hash as the revision;
//   - go install module@version: that version; the revision is the
//     pseudo-version's commit, and "unknown" for a tagged version (a
//     module download carries no VCS information);
//   - a build outside VCS or with -buildvcs=false: version "(devel)",
//     revision "unknown": the toolchain knows nothing more.
func init() {
	if info, ok := debug.ReadBuildInfo(); ok {
		FillVersion(info)
	}
}

// FillVersion sets version.Version and version.Revision from info where
// they are empty (that is, where no -ldflags -X set them).
func FillVersion(info *debug.BuildInfo) {
	v, rev := versionFromBuildInfo(info)
	if version.Version == "" {
		version.Version = v
	}
	if version.Revision == "" {
		version.Revision = rev
	}
}

// pseudoRevision is the commit at the end of a module pseudo-version
// (v0.0.0-20260101120000-0123456789ab, v1.2.4-0.20260101120000-0123456789ab).
var pseudoRevision = regexp.MustCompile(`[-.]\d{14}-([0-9a-f]{12})(\+dirty)?$`)

// versionFromBuildInfo returns the main module's version, without Go's
// leading "v" (as -ldflags sets it: 1.2.3), and the VCS revision, "" when
// the build information has none.
func versionFromBuildInfo(info *debug.BuildInfo) (ver, rev string) {
	ver = info.Main.Version
	if strings.HasPrefix(ver, "v") {
		ver = ver[1:]
	}
	modified := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev == "" {
		if m := pseudoRevision.FindStringSubmatch(info.Main.Version); m != nil {
			rev = m[1]
			modified = m[2] != ""
		}
	}
	if rev != "" && modified {
		rev += "-modified"
	}
	return ver, rev
}
