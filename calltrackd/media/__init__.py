"""Media through rtpengine: the ng control client, recording conversion and storage."""
