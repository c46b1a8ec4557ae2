# Writes OUTPUT, a .cpp defining `const std::string_view NAMESPACE::SYMBOL`
# holding INPUT verbatim, so runtime code can use files from the source tree.
# Usage: cmake -DINPUT=f -DOUTPUT=f.cpp -DNAMESPACE=a::b -DSYMBOL=k -P embed_text.cmake
foreach(var INPUT OUTPUT NAMESPACE SYMBOL)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "embed_text.cmake: ${var} not set")
  endif()
endforeach()

file(READ "${INPUT}" text)
set(delim "sluice_embed")
string(FIND "${text}" ")${delim}\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "embed_text.cmake: ${INPUT} contains the raw-string delimiter")
endif()

get_filename_component(input_name "${INPUT}" NAME)
file(WRITE "${OUTPUT}"
  "// Generated from ${input_name} by embed_text.cmake. Do not edit.\n"
  "#include <string_view>\n"
  "namespace ${NAMESPACE} {\n"
  "extern const std::string_view ${SYMBOL};\n"
  "const std::string_view ${SYMBOL} = R\"${delim}(${text})${delim}\";\n"
  "}\n")
