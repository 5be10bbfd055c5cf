// This file stands in, at build time, for the package's config.go: the slim
// build's Config and its check are in extension.go beside it.

package jaegerstorage
