"""The shared build cache: a small OCI registry client (``oci``) and the
cache's key, pulls and pushes (``buildcache``); for the build and install
steps, which import it only when one runs."""
