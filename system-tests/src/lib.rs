//! Holds only tests (`tests/`): behaviour that spans several NomadWave binaries and real
//! servers, such as secrets never appearing in any output.
