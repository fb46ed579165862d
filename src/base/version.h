/* The version of this sbx: the project's version (meson.build) and the revision it was built
 * from (`git describe`, when built from a git checkout). */
#ifndef SBX_BASE_VERSION_H
#define SBX_BASE_VERSION_H

/* "0.1.0" or "0.1.0 (9347bcc-dirty)". */
const char *sbx_version(void);

#endif
