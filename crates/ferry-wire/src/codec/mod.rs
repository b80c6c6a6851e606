//! Page codecs (owned by the codec work; placeholder).
